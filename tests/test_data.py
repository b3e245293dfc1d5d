import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vlpbench.config import EmbeddedDataConfig
from vlpbench.data.datasets import (DatasetError, SkipReport, load_image, load_image_captions, pairs_of,
                                    to_rgb)
from vlpbench.data.embedded import dataset_dir, ensure_embedded_dataset
from vlpbench.data.scenes import Scene, SceneObject


def make_image(path, mode="RGB", size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 40)).convert(mode).save(path)
    return path.name


@pytest.fixture
def bad_dataset(tmp_path):
    root = tmp_path / "images"
    good = make_image(root / "good.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image at all")
    full = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    records = [
        {"image": good, "caption": "a red box"},
        {"image": "missing.png", "caption": "x"},
        {"image": "empty.png", "caption": "x"},
        {"image": "text.png", "caption": "x"},
        {"image": "truncated.png", "caption": "x"},
        {"caption": "no image"},
        {"image": good},
        {"image": good, "caption": 7},
        {"image": good, "caption": ["fine", ""]},
        {"image": good, "caption": ["two", "captions"]},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    return ann, root


@pytest.mark.parametrize("index, problem", [
    (1, "image file is missing"), (2, "image file is empty"), (3, "cannot be decoded"), (4, "cannot be decoded"),
    (5, "no 'image'"), (6, "no 'caption'"), (7, "must be a string or a non-empty list"), (8, "non-empty strings"),
])
def test_bad_record_error_names_file_index_and_problem(bad_dataset, index, problem):
    ann, root = bad_dataset
    records = json.loads(ann.read_text())
    single = ann.with_name(f"single{index}.json")
    single.write_text(json.dumps([records[0], records[index]]))
    with pytest.raises(DatasetError) as info:
        load_image_captions([str(single)], root, "error", True, SkipReport())
    message = str(info.value)
    assert str(single) in message and "record 1" in message and problem in message


def test_skip_mode_skips_and_counts(bad_dataset):
    ann, root = bad_dataset
    skips = SkipReport()
    entries = load_image_captions([str(ann)], root, "skip", True, skips)
    assert [e.captions for e in entries] == [["a red box"], ["two", "captions"]]
    assert skips.total == 8
    # grouped by problem kind, not by message: the text file and the truncated PNG both fail to decode
    report = skips.as_dict()
    assert report["total"] == 8 and len(report["by_file_and_problem"]) == 7
    assert report["by_file_and_problem"][f"{ann}: image file cannot be decoded"] == 2
    # one example per problem, with the resolved image path
    assert str(root / "missing.png") in report["examples"][f"{ann}: image file is missing"]


def test_annotation_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image": "a.png",\n "caption": }]')
    with pytest.raises(DatasetError, match=r"bad.json: not valid JSON \(line 2"):
        load_image_captions([str(bad)], tmp_path, "error", True, SkipReport())
    bad.write_text('{"image": "a.png"}')
    with pytest.raises(DatasetError, match="expected a JSON list"):
        load_image_captions([str(bad)], tmp_path, "error", True, SkipReport())
    with pytest.raises(DatasetError, match="annotation file not found"):
        load_image_captions([str(tmp_path / "none.json")], tmp_path, "error", True, SkipReport())


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "RGBA", "P", "LA", "CMYK", "I;16", "I"])
def test_every_image_mode_converts_to_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'tiff' if mode.startswith('I') or mode == 'CMYK' else 'png'}"
    make_image(path, mode)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (12, 10)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_embedded_dataset_is_deterministic_and_cached(tmp_path):
    cfg = EmbeddedDataConfig(num_pretrain_images=10, num_test_images=4, image_size=32, root=str(tmp_path))
    folder = ensure_embedded_dataset(cfg, log=lambda *_: None)
    first = (folder / "pretrain.json").read_text()
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    assert ensure_embedded_dataset(cfg, log=lambda *_: None) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime, "not regenerated"
    other = EmbeddedDataConfig(num_pretrain_images=10, num_test_images=4, image_size=32, root=str(tmp_path / "b"))
    assert (ensure_embedded_dataset(other, log=lambda *_: None) / "pretrain.json").read_text() == first
    changed = cfg.model_copy(update={"seed": 1})
    assert dataset_dir(changed) != folder


def test_embedded_dataset_contents(tmp_path):
    cfg = EmbeddedDataConfig(num_pretrain_images=200, captions_per_image=2, num_test_images=10, image_size=32,
                             noisy_fraction=0.2, partial_fraction=0.3, root=str(tmp_path))
    folder = ensure_embedded_dataset(cfg, log=lambda *_: None)
    pretrain = json.loads((folder / "pretrain.json").read_text())
    assert len(pretrain) == 400
    noise = [r["noise"] for r in pretrain]
    assert 0.1 < sum(n is not None for n in noise) / 400 < 0.3
    assert {"mismatch", "wrong_attribute"} <= set(noise)
    assert any(r["partial"] for r in pretrain)
    clean = [r for r in pretrain if r["noise"] is None]
    for r in clean[:50]:
        for phrase in r["phrases"]:
            assert r["caption"][phrase["start"]:phrase["end"]] == phrase["text"]
            x, y, w, h = phrase["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 32 and y + h <= 32
    test = json.loads((folder / "retrieval_test.json").read_text())
    assert len(test) == 10 and all(len(r["caption"]) == 5 for r in test)
    words = " ".join(r["caption"] for r in pretrain).split()
    assert "big" in words and "large" in words  # synonyms
    for name in ("vqa_test", "nlvr_test", "ve_test", "grounding_test", "retrieval_train"):
        assert json.loads((folder / f"{name}.json").read_text()), name
    ve_labels = {r["label"] for r in json.loads((folder / "ve_test.json").read_text())}
    assert ve_labels == {"entailment", "neutral", "contradiction"}
    # every annotation file loads with the standard loader
    entries = load_image_captions([str(folder / "retrieval_test.json")], folder, "error", True, SkipReport())
    assert len(entries) == 10


def test_wrong_image_root_in_skip_mode_says_why_nothing_was_usable(bad_dataset, tmp_path):
    ann, root = bad_dataset
    good_only = tmp_path / "good.json"
    good_only.write_text(json.dumps([{"image": "good.png", "caption": "a"}, {"image": "good.png", "caption": "b"}]))
    wrong_root = tmp_path / "not_the_images"
    with pytest.raises(DatasetError) as info:
        load_image_captions([str(good_only)], wrong_root, "skip", True, SkipReport())
    message = str(info.value)
    assert "no usable records: all 2 were skipped" in message
    assert f"{good_only}: image file is missing: 2" in message
    assert str(wrong_root / "good.png") in message  # one resolved path shows the root is wrong


def test_error_mode_hint_names_the_switch_the_caller_has(bad_dataset):
    ann, root = bad_dataset
    with pytest.raises(DatasetError, match=r"\(pass --on-bad-record skip to skip and count such records\)"):
        load_image_captions([str(ann)], root, "error", True, SkipReport(), "pass --on-bad-record skip")
    with pytest.raises(DatasetError, match=r"\(set data.on_bad_record: skip to skip"):
        load_image_captions([str(ann)], root, "error", True, SkipReport())


def test_too_few_pretraining_pairs_after_skipping_is_a_clear_error(bad_dataset, tiny_config):
    from vlpbench.config import config_from_dict
    from vlpbench.pipeline import open_pretrain

    ann, root = bad_dataset
    cfg = config_from_dict({**tiny_config, "data": {**tiny_config.get("data", {}), "on_bad_record": "skip",
                                                     "pretrain": {"ann": str(ann), "image_root": str(root)}}})
    with pytest.raises(DatasetError) as info:  # batch_size 4; 2 records, 3 captions left
        open_pretrain(cfg, SkipReport(), log=lambda *_: None)
    message = str(info.value)
    assert message.startswith("the pre-training data (albef_json) holds 3 image-caption pairs, after skipping 8 bad "
                              "records: ")
    assert "image file cannot be decoded: 2" in message
    assert message.endswith("train.batch_size x train.grad_accum_steps = 4 needs at least 4")


def test_region_boxes_are_read_from_boxes_or_phrases_and_bad_ones_are_named(tmp_path):
    name = make_image(tmp_path / "img.png", size=(16, 16))
    records = [{"image": name, "caption": "a box", "boxes": [[0, 0, 7, 7]]},
               {"image": name, "caption": "a red box", "phrases": [{"text": "a red box", "bbox": [8, 8, 4, 4]}]},
               {"image": name, "caption": "no region"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    entries = load_image_captions([str(ann)], tmp_path, "error", True, SkipReport())
    assert [e.boxes for e in entries] == [[[0.0, 0.0, 7.0, 7.0]], [[8.0, 8.0, 4.0, 4.0]], None]
    ann.write_text(json.dumps([{"image": name, "caption": "x", "boxes": [[1, 2, 3]]}]))
    with pytest.raises(DatasetError, match=r"ann.json: record 0: 'boxes' must be a list of \[x, y, w, h\]"):
        load_image_captions([str(ann)], tmp_path, "error", True, SkipReport())


def test_downstream_wording_does_not_give_the_label_away():
    """Each task's text alone must not answer it: yes/no balanced, NLVR2 statements true half the time
    within each kind, VE entailment and contradiction worded alike."""
    import random
    from collections import Counter

    from vlpbench.data import captions as cap
    from vlpbench.data.scenes import sample_scene
    from vlpbench.downstream.common import sentence_frame
    rng = random.Random(0)
    scenes = [sample_scene(rng, 4) for _ in range(3000)]
    answers = Counter(a for s in scenes for q, a in cap.vqa_questions(s, rng) if q.startswith("is there"))
    assert 0.45 < answers["yes"] / sum(answers.values()) < 0.55
    truth = Counter()
    for left, right in zip(scenes[::2], scenes[1::2]):
        statement, label = cap.nlvr_statement(left, right, rng)
        truth[(cap._kind(statement), label)] += 1
    for kind in ("more shapes", "both", "exactly one"):
        assert 0.4 < truth[(kind, True)] / (truth[(kind, True)] + truth[(kind, False)]) < 0.6, kind
    for scene in scenes[:200]:
        (entailed, _), (contradicted, _), (neutral, _) = cap.entailment_hypotheses(scene, rng)
        assert sentence_frame(entailed).replace(" an ", " a ") == sentence_frame(contradicted).replace(" an ", " a ")


def test_a_scene_key_ignores_what_no_caption_can_tell_apart():
    star = SceneObject("star", "red", "small", 0, 2, cx=0.80, cy=0.15, radius=0.10)
    moved = SceneObject("star", "red", "small", 0, 2, cx=0.85, cy=0.18, radius=0.10)  # same grid cell
    disc = SceneObject("circle", "blue", "large", 1, 1, cx=0.5, cy=0.5, radius=0.16)
    assert Scene((star, disc), "plain", "gray").key == Scene((disc, moved), "plain", "gray").key
    assert Scene((star, disc), "plain", "gray").key != Scene((star, disc), "dotted", "gray").key
    assert Scene((star,), "plain", "gray").key != Scene((star, disc), "plain", "gray").key


def test_embedded_scene_ids_name_the_first_image_of_each_scene(tmp_path):
    cfg = EmbeddedDataConfig(num_pretrain_images=300, max_objects=1, num_test_images=4, image_size=32,
                             root=str(tmp_path))  # one object per scene: twins are common
    folder = ensure_embedded_dataset(cfg, log=lambda *_: None)
    pretrain = json.loads((folder / "pretrain.json").read_text())
    graphs = json.loads((folder / "scene_graphs.json").read_text())
    first: dict = {}
    for record in pretrain:
        g = graphs[record["image"]]
        key = Scene(tuple(SceneObject(**o) for o in g["objects"]), g["background"], g["tint"]).key
        assert record["scene_id"] == first.setdefault(key, record["image_id"])
    assert len(first) < 300  # some scenes repeat


def test_pairs_of_one_scene_share_a_match_id_and_a_bad_scene_id_is_named(tmp_path):
    names = [make_image(tmp_path / f"{i}.png") for i in range(3)]
    records = [{"image": names[0], "caption": ["a", "b"], "scene_id": 7}, {"image": names[1], "caption": "c",
               "scene_id": 7}, {"image": names[2], "caption": "d"}, {"image": names[2], "caption": "e"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    entries = load_image_captions([str(ann)], tmp_path, "error", True, SkipReport())
    assert [image_id for _, _, image_id in pairs_of(entries)] == [0, 0, 0, 1, 1]
    # image 2 gives scene 7 in one record only, image 1 names scene 8 once: one group, transitively
    records += [{"image": names[2], "caption": "f", "scene_id": 7}, {"image": names[1], "caption": "g", "scene_id": 8},
                {"image": names[0], "caption": "h", "scene_id": 9}]
    ann.write_text(json.dumps(records))
    entries = load_image_captions([str(ann)], tmp_path, "error", True, SkipReport())
    assert {image_id for _, _, image_id in pairs_of(entries)} == {0}
    ann.write_text(json.dumps([{"image": names[0], "caption": "x", "scene_id": [1]}]))
    with pytest.raises(DatasetError, match=r"ann.json: record 0: 'scene_id' must be an integer or a string"):
        load_image_captions([str(ann)], tmp_path, "error", True, SkipReport())


def test_a_folder_another_process_publishes_first_is_kept_and_ours_discarded(tmp_path, monkeypatch):
    from vlpbench.io import build_folder_atomically
    folder, rename = tmp_path / "dataset", Path.rename

    def published_just_before(self, target):  # a concurrent job (a Slurm array task) renames its copy first
        folder.mkdir()
        (folder / "theirs.txt").write_text("theirs")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", published_just_before)
    build_folder_atomically(folder, lambda tmp: (tmp / "ours.txt").write_text("ours"))
    assert [p.name for p in folder.iterdir()] == ["theirs.txt"] and not list(tmp_path.glob("dataset.tmp-*"))


def test_snli_ve_records_as_albef_released_them_name_images_by_flickr_id(tmp_path):
    from vlpbench.data.datasets import load_records
    from vlpbench.downstream.snli_ve import parse_ve
    Image.new("RGB", (8, 8)).save(tmp_path / "2248275918.jpg")
    records = [{"image": "2248275918", "sentence": "Two dogs run.", "label": "entailment"},  # ALBEF's ve_train.json
               {"image": "2248275918.jpg", "sentence": "A cat sleeps.", "label": "contradiction"},
               {"image": "1000092795", "sentence": "A man waits.", "label": "neutral"}]
    (tmp_path / "ve_train.json").write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"ve_train.json: record 2: image file is missing: .*1000092795.jpg"):
        load_records([str(tmp_path / "ve_train.json")], tmp_path, parse_ve, "error", True, SkipReport())
    loaded = load_records([str(tmp_path / "ve_train.json")], tmp_path, parse_ve, "skip", True, SkipReport())
    assert [(r.image.name, r.label) for r in loaded] == [("2248275918.jpg", 0), ("2248275918.jpg", 2)]


def test_a_bad_image_met_in_training_is_skipped_and_counted(tiny_config, tmp_path):
    from vlpbench.cli import main
    data = Path(main_data_folder(tiny_config))
    records = json.loads((data / "pretrain.json").read_text())
    (data / "truncated.png").write_bytes((data / records[0]["image"]).read_bytes()[:60])
    records[0]["image"] = "truncated.png"  # not decoded at open: verify_images is off
    (tmp_path / "pretrain.json").write_text(json.dumps(records))
    tiny_config["data"].update(pretrain={"ann": str(tmp_path / "pretrain.json"), "image_root": str(data)},
                               verify_images=False)
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(experiment), "-o", "train.steps=12"]) == 0  # 2 epochs of 24 pairs: met twice
    (results,) = Path(tiny_config["output_dir"]).glob("tiny/*/results.json")
    skipped = json.loads(results.read_text())["train"]["skipped_samples"]
    assert skipped["count"] == 2
    assert skipped["examples"][0].startswith(f"{tmp_path / 'pretrain.json'}#0: image file cannot be decoded: ")


def main_data_folder(tiny_config) -> str:
    from vlpbench.config import config_from_dict
    from vlpbench.pipeline import pretrain_annotations
    return pretrain_annotations(config_from_dict(tiny_config).data, log=lambda *_: None).image_root


def test_karpathy_split_files_load_by_split_as_released(tmp_path):
    """dataset_coco.json's layout (filepath + filename; Flickr30K's has no filepath), read by split."""
    from vlpbench.config import AnnotationSource
    from vlpbench.data.datasets import load_source
    (tmp_path / "val2014").mkdir()
    names = [make_image(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg") for i in range(3)]
    sentence = {"tokens": ["a", "man"], "raw": "A man with a red helmet. ", "imgid": 0, "sentid": 1}
    images = [{"filepath": "val2014", "filename": Path(names[0]).name, "imgid": 0, "cocoid": 391895, "split": "test",
               "sentids": [1, 2], "sentences": [sentence, {**sentence, "raw": "a moped"}]},
              {"filepath": "val2014", "filename": Path(names[1]).name, "imgid": 1, "split": "restval",
               "sentences": [{**sentence, "raw": "a dog"}]},
              {"filename": make_image(tmp_path / "1000092795.jpg"), "imgid": 2, "split": "train",
               "sentences": [{"raw": "x"}]},
              {"filepath": "val2014", "filename": Path(names[2]).name, "imgid": 3, "split": "test"}]
    ann = tmp_path / "dataset_coco.json"
    ann.write_text(json.dumps({"images": images, "dataset": "coco"}))
    test = AnnotationSource(ann=str(ann), image_root=str(tmp_path), format="karpathy", split="test")
    with pytest.raises(DatasetError, match=r"dataset_coco.json: record 3: record has no 'caption' \(a Karpathy file: "
                                           r"record i is images\[i\]; 'caption' is read from its sentences"):
        load_source(test, "error", True, SkipReport())
    entries = load_source(test, "skip", True, SkipReport())
    assert [(e.image.name, e.captions) for e in entries] == [(Path(names[0]).name, ["A man with a red helmet.",
                                                                                  "a moped"])]
    train = AnnotationSource(ann=str(ann), image_root=str(tmp_path), format="karpathy", split=["train", "restval"])
    assert [e.captions for e in load_source(train, "error", True, SkipReport())] == [["a dog"], ["x"]]
    assert [e.image.parent.name for e in load_source(train, "error", True, SkipReport())] == ["val2014", tmp_path.name]
    with pytest.raises(ValueError, match=r"format: karpathy needs split"):
        AnnotationSource(ann=str(ann), format="karpathy")
    (tmp_path / "albef.json").write_text(json.dumps([{"image": names[0], "caption": "x"}]))
    with pytest.raises(DatasetError, match=r"albef.json: expected a Karpathy split file"):
        load_source(test.model_copy(update={"ann": str(tmp_path / "albef.json")}), "error", True, SkipReport())
