"""Common random numbers (issue 21.1): two configurations run with one seed share every draw they
have in common: data order, augmentations, the initial weights of shared parameters, and each
purpose's per-step draws, whatever else either configuration draws or builds."""

import copy

import torch

from vlpbench import pipeline
from vlpbench.config import config_from_dict
from vlpbench.data.datasets import SkipReport
from vlpbench.masking import mask_tokens_for_mlm, random_patch_masking, random_token_masking
from vlpbench.streams import init_part, stream
from vlpbench.train import Trainer

LIGHTVLP = {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "cross_layers": 2, "decoder_layers": 1,
            "decoder_width": 32, "decoder_heads": 2}


def built(tiny_config, method: dict):
    cfg = config_from_dict({**copy.deepcopy(tiny_config), "method": method})
    data = pipeline.open_pretrain(cfg, SkipReport(), lambda *a: None)
    tokenizer = pipeline.make_tokenizer(cfg, data.captions())
    torch.manual_seed(cfg.seed)
    method = pipeline.build_method(cfg, tokenizer)
    trainer = Trainer.for_experiment(cfg, method, data.dataset,
                      pipeline.Collate(tokenizer, cfg.data.max_text_len), None, torch.device("cpu"))
    return method, trainer


def test_another_mask_ratio_shares_data_order_augmentations_and_initial_weights(tiny_config):
    tiny_config["data"]["augment"] = {"crop_scale_min": 0.5, "hflip": True}
    low, low_trainer = built(tiny_config, {**LIGHTVLP, "image_mask_ratio": 0.25, "text_mask_ratio": 0.25})
    high, high_trainer = built(tiny_config, {**LIGHTVLP, "image_mask_ratio": 0.75, "text_mask_ratio": 0.75})
    for a, b in zip(*(list(zip(range(3), t.batches())) for t in (low_trainer, high_trainer))):
        assert torch.equal(a[1].images, b[1].images) and torch.equal(a[1].input_ids, b[1].input_ids)
    high_state = high.state_dict()
    assert low.state_dict().keys() == high_state.keys()
    assert all(torch.equal(value, high_state[key]) for key, value in low.state_dict().items())


def test_albef_table1_row1_starts_its_shared_parameters_as_full_albef_does(tiny_config):
    tiny_config["eval"]["retrieval"]["k_test"] = "all"
    full, _ = built(tiny_config, {"name": "albef", "embed_dim": 32, "queue_size": 16})
    row1, _ = built(tiny_config, {"name": "albef", "embed_dim": 32, "queue_size": 16, "itc": False,
                                  "distill_itc": False, "distill_mlm": False, "itm_hard_negatives": False})
    full_state, row1_state = full.state_dict(), row1.state_dict()
    shared = [k for k in row1_state if k in full_state and not k.startswith("teacher.")]
    assert len(shared) > 100 and all(torch.equal(row1_state[k], full_state[k]) for k in shared)


def test_a_part_starts_identical_whatever_optional_part_is_built_before_it(tiny_config):
    # VLMAE Table 6: the Baseline (mim: none) builds no image decoder, which +RMIM builds before its queues
    vlmae = {"name": "vlmae", "embed_dim": 32, "queue_size": 16, "decoder_layers": 1, "decoder_width": 32,
             "decoder_heads": 2}
    rmim, _ = built(tiny_config, vlmae)
    baseline, _ = built(tiny_config, {**vlmae, "mim": "none", "ifr": False})
    rmim_state, baseline_state = rmim.state_dict(), baseline.state_dict()
    assert any(k.startswith("image_decoder.") for k in rmim_state)
    assert not any(k.startswith("image_decoder.") for k in baseline_state)
    assert all(torch.equal(value, rmim_state[key]) for key, value in baseline_state.items())
    assert torch.equal(baseline.image_queue.features, rmim.image_queue.features)


def test_init_part_draws_from_its_own_stream_and_leaves_the_global_one_untouched():
    torch.manual_seed(7)
    first = init_part("head", torch.nn.Linear, 4, 2)
    after = torch.rand(3)
    torch.manual_seed(7)
    torch.nn.Linear(8, 8)  # another part built first draws from the global generator...
    second = init_part("head", torch.nn.Linear, 4, 2)  # ...and "head" starts as before
    assert torch.equal(first.weight, second.weight)
    assert not torch.equal(init_part("tail", torch.nn.Linear, 4, 2).weight, first.weight)
    torch.manual_seed(7)
    init_part("head", torch.nn.Linear, 4, 2)
    assert torch.equal(torch.rand(3), after)  # as if nothing had been drawn


def test_each_purpose_draws_the_same_numbers_whatever_else_is_drawn():
    mask = torch.ones(4, 12, dtype=torch.long)
    torch.manual_seed(11)
    low = random_patch_masking(4, 16, 0.25)
    tokens = random_token_masking(mask, 0.5)
    torch.manual_seed(11)
    torch.rand(1000)  # other draws of the step (dropout) come from torch's global generator
    mlm = mask_tokens_for_mlm(torch.randint(5, 50, (4, 12)), 50, 1, [0])  # a purpose the other run lacks
    high = random_patch_masking(4, 16, 0.75)
    assert torch.equal(random_token_masking(mask, 0.5).mask, tokens.mask)
    assert (low.mask <= high.mask).all()  # the same noise: the 25% masked are among the 75%
    assert low.mask.sum() == 4 * 4 and high.mask.sum() == 4 * 12
    assert mlm.labels.shape == (4, 12)
    torch.manual_seed(12)
    assert not torch.equal(random_patch_masking(4, 16, 0.75).mask, high.mask)  # another step, other draws


def test_streams_differ_by_purpose_and_repeat_after_seeding_again():
    torch.manual_seed(3)
    a = torch.rand(5, generator=stream("patch_mask"))
    b = torch.rand(5, generator=stream("token_mask"))
    torch.manual_seed(3)
    assert torch.equal(torch.rand(5, generator=stream("patch_mask")), a) and not torch.equal(a, b)
