"""Training augmentations (vlpbench.data.transforms, vlpbench.data.randaugment): ALBEF's
RandAugment, VLMAE's photometric steps, and region maps that move with the image."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlpbench.config import AugmentConfig, ColorJitterConfig, ConfigError, RandAugmentConfig, config_from_dict
from vlpbench.data import randaugment
from vlpbench.data.randaugment import GEOMETRIC, Op
from vlpbench.data.transforms import MEAN, STD, ImageTransform

EVERY_STEP = AugmentConfig(crop_scale_min=0.2, hflip=True, color_jitter=ColorJitterConfig(), grayscale_probability=0.2,
                           blur_probability=0.5, randaugment=RandAugmentConfig())


def white_square(size: int = 48, box=(14, 10, 16, 16)) -> tuple[Image.Image, list[float]]:
    """A black image with one white square, and its [x, y, w, h] box."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    x, y, w, h = box
    img.paste((255, 255, 255), (x, y, x + w, y + h))
    return img, [float(v) for v in box]


def bright(pixels: torch.Tensor) -> torch.Tensor:
    """Where the normalised image is brighter than mid-grey (the fill of empty pixels is 128)."""
    return ((pixels * STD + MEAN).mean(0) > 0.75)


def test_translation_and_rotation_move_points_as_the_authors_opencv_matrices_do():
    img = Image.new("L", (20, 20), 0)
    img.putpixel((15, 10), 255)
    moved = np.asarray(randaugment.apply_geometry(img, (Op("TranslateX", 7.0),)))
    assert moved[10, 8] == 255 and moved.sum() == 255  # x 15 -> 15 - 7
    # +90 degrees about the centre (10, 10): counter-clockwise on screen, (15, 10) -> (10, 5)
    a, b, c, d, e, f = randaugment.forward_affine(Op("Rotate", 90.0), (20, 20))
    assert (a * 15 + b * 10 + c, d * 15 + e * 10 + f) == pytest.approx((10.0, 5.0))
    a, b, c, d, e, f = randaugment.forward_affine(Op("ShearX", 0.21), (20, 20))
    assert (a * 0 + b * 10 + c, d * 0 + e * 10 + f) == pytest.approx((2.1, 10.0))


def test_magnitude_7_gives_the_authors_arguments_and_each_op_has_probability_one_half():
    ops = RandAugmentConfig(num_ops=2, magnitude=7)
    augment = randaugment.RandAugment(ops)
    generator = torch.Generator().manual_seed(0)
    draws = [augment.draw(generator) for _ in range(4000)]
    assert np.mean([len(d) for d in draws]) == pytest.approx(1.0, abs=0.05)  # 2 ops x 0.5
    values = {(op.name, abs(op.value)) for d in draws for op in d}
    assert values == {("Identity", 0.0), ("AutoContrast", 0.0), ("Equalize", 0.0), ("Brightness", 1.36),
                      ("Sharpness", 1.36), ("ShearX", 0.21), ("ShearY", 0.21), ("TranslateX", 7.0),
                      ("TranslateY", 7.0), ("Rotate", 21.0)}
    signs = [op.value > 0 for d in draws for op in d if op.name in GEOMETRIC]
    assert np.mean(signs) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("op", GEOMETRIC)
def test_the_region_map_stays_on_the_object_through_every_geometric_step(op):
    transform = ImageTransform(32, AugmentConfig(crop_scale_min=0.5, hflip=True, randaugment=RandAugmentConfig(
        num_ops=2, magnitude=10, ops=(op,))))
    img, box = white_square()
    generator = torch.Generator().manual_seed(0)
    moved = 0
    for _ in range(30):
        aug = transform.draw(img.size, generator)
        region, object_pixels = transform.region([box], img.size, aug), bright(transform.apply(img, aug))
        if not region.any():  # moved out of the frame: so did the object
            assert object_pixels.sum() <= 2, aug
            continue
        assert (region & object_pixels).sum() / (region | object_pixels).sum() > 0.75, aug
        assert torch.dist(centroid(region), centroid(object_pixels)) < 1.0, aug  # pixels at 32 px
        moved += bool(aug.ops)
    assert moved >= 15  # most draws applied the op (3 in 4 on average)


def centroid(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).float().mean(0)


def test_photometric_steps_leave_the_region_map_alone():
    transform = ImageTransform(32, AugmentConfig(color_jitter=ColorJitterConfig(probability=1.0), grayscale_probability=1.0,
                                                 blur_probability=1.0, randaugment=RandAugmentConfig(ops=("Brightness",))))
    img, box = white_square()
    aug = transform.draw(img.size, torch.Generator().manual_seed(0))
    assert aug.grayscale and aug.jitter is not None and aug.blur_sigma is not None
    plain = ImageTransform(32)
    assert torch.equal(transform.region([box], img.size, aug), plain.region([box], img.size, plain.draw(img.size, None)))
    pixels = transform.apply(Image.new("RGB", (32, 32), (200, 40, 40)), aug) * STD + MEAN
    assert torch.allclose(pixels[0], pixels[1]) and torch.allclose(pixels[1], pixels[2])  # grayscale


def test_a_step_added_later_shifts_no_earlier_draw():
    img, _ = white_square()
    base = ImageTransform(32, AugmentConfig(crop_scale_min=0.2, hflip=True))
    full = ImageTransform(32, EVERY_STEP)
    for seed in range(5):
        a = base.draw(img.size, torch.Generator().manual_seed(seed))
        b = full.draw(img.size, torch.Generator().manual_seed(seed))
        assert (a.crop, a.flip) == (b.crop, b.flip)


def test_without_a_generator_nothing_is_drawn():
    img, _ = white_square()
    assert torch.equal(ImageTransform(32, EVERY_STEP)(img, None), ImageTransform(32)(img, None))


def test_an_unknown_randaugment_op_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"data.augment.randaugment.ops"):
        config_from_dict({"method": {"name": "albef"}, "train": {"steps": 1, "batch_size": 2},
                          "data": {"augment": {"randaugment": {"ops": ["Rotate", "Zoom"]}}}})
