import math

import pytest
import torch
from conftest import train_on_one_batch

from vlpbench.methods.vilta import negative_word_distribution
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.experiment import run_experiment
from vlpbench.method import Batch, Progress
from vlpbench.pipeline import build_method
from vlpbench.rundir import RunDir
from vlpbench.wordroles import content_token_mask
from vlpbench.zoo import train_wordpiece

PROGRESS = Progress(step=5, steps_per_epoch=10)
CAPTIONS = ["a red circle on the left", "a big blue box at the top right", "there is a green star",
            "two shapes: a small white triangle and a yellow disk"]


def make(tiny_config, **method):
    tiny_config["method"] = {"name": "vilta", "fusion_layers": 1, **method}
    tiny_config["model"]["unimodal"] = {"text_steps": 2, "batch_size": 8}
    tiny_config["eval"]["retrieval"] = {"k_test": "all", "batch_size": 8}
    cfg = config_from_dict(tiny_config)
    tok = train_wordpiece(CAPTIONS * 5, vocab_size=80)
    return build_method(cfg, tok), tok


def batch(tok):
    ids, mask = tok(CAPTIONS, 16)
    return Batch(torch.randn(4, 3, 32, 32), ids, mask)


def test_p_n_is_p_m_over_q_m_normalised_without_the_original_and_specials():
    p_m = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    q_m = torch.tensor([[0.1, 0.2, 0.6, 0.1]])
    # ratios 1, 2, 0.5, 2; token 3 is the original, token 0 a special -> (0, 2, 0.5, 0) / 2.5
    p_n = negative_word_distribution(p_m, q_m, torch.tensor([3]), torch.tensor([0]))
    torch.testing.assert_close(p_n, torch.tensor([[0.0, 0.8, 0.2, 0.0]]))


@pytest.mark.parametrize("negatives", ["dynamic", "pregenerated"])
def test_synthetic_negative_changes_exactly_one_content_word(tiny_config, negatives):
    method, tok = make(tiny_config, negatives=negatives)
    b = batch(tok)
    teacher_states = method.language_teacher.encode_text_only(b.input_ids, b.attention_mask)
    for seed in range(5):
        torch.manual_seed(seed)
        negative, mask = method.negative_texts(b, teacher_states)
        changed = negative != b.input_ids
        assert torch.equal(mask, b.attention_mask) and (changed.sum(1) == 1).all()
        assert method.content_tokens[b.input_ids[changed]].all(), "the replaced word is a content word"
        assert not torch.isin(negative[changed], method.special_ids).any()
    if negatives == "pregenerated":  # keyed by the caption: the same negative whatever the global seed
        torch.manual_seed(123)
        again, _ = method.negative_texts(b, teacher_states)
        assert torch.equal(again, negative)


def test_embedded_content_words_are_the_generators_lexicon():
    tok = train_wordpiece(CAPTIONS * 5, vocab_size=80)
    flags = content_token_mask(tok, "embedded")
    content = {t for t, f in zip(tok.hf.convert_ids_to_tokens(list(range(tok.vocab_size))), flags) if f}
    assert {"red", "circle", "left", "big", "blue", "box", "top", "two", "disk"} <= content
    assert not content & {"a", "the", "on", "there", "is", "shapes", "and", "[MASK]"}


def test_teacher_gets_no_gradient_and_never_changes(tiny_config):
    method, tok = make(tiny_config)
    before = {k: v.clone() for k, v in method.language_teacher.state_dict().items()}
    train_on_one_batch(method, batch(tok), PROGRESS, steps=2)
    assert all(p.grad is None for p in method.language_teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.language_teacher.state_dict().items())
    assert not torch.equal(before["embeddings.word.weight"], method.text.state_dict()["embeddings.word.weight"])


def test_cross_distillation_mixes_ce_and_kl_with_alpha(tiny_config):
    plain, tok = make(tiny_config, cross_distill=False, negatives="in_batch")
    distilled, _ = make(tiny_config, alpha=1.0)
    distilled.load_state_dict(plain.state_dict(), strict=False)
    b = batch(tok)
    image = plain.visual_encoder(b.images)
    teacher_states = distilled.language_teacher.encode_text_only(b.input_ids, b.attention_mask)
    torch.manual_seed(0)
    ce = plain.mlm_loss(image, b, None)
    torch.manual_seed(0)
    torch.testing.assert_close(distilled.mlm_loss(image, b, teacher_states), ce)  # alpha 1: the one-hot loss only


@pytest.mark.parametrize("random_image_negatives, positive_share", [(True, 1 / 3), (False, 1 / 2)])
def test_itm_pairs_are_positives_synthetic_and_random_image_negatives(tiny_config, random_image_negatives,
                                                                      positive_share):
    method, tok = make(tiny_config, random_image_negatives=random_image_negatives)
    b = batch(tok)
    torch.nn.init.zeros_(method.itm_head.weight)
    with torch.no_grad():  # logits (0, ln 2) everywhere: CE ln 1.5 for a positive, ln 3 for a negative
        method.itm_head.bias.copy_(torch.tensor([0.0, math.log(2.0)]))
    image = method.visual_encoder(b.images)
    loss = method.itm_loss(image, b, b.input_ids.flip(0), b.attention_mask.flip(0))
    expected = positive_share * math.log(1.5) + (1 - positive_share) * math.log(3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_few_steps_reduce_the_loss(tiny_config):
    method, tok = make(tiny_config)
    losses = train_on_one_batch(method, batch(tok), PROGRESS)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_a_random_teacher_is_refused(tiny_config):
    tiny_config["method"] = {"name": "vilta", "fusion_layers": 1}
    tiny_config["eval"]["retrieval"] = {"k_test": "all"}
    with pytest.raises(ConfigError, match="random teacher"):
        config_from_dict(tiny_config)
    tiny_config["method"] |= {"cross_distill": False, "negatives": "in_batch"}
    assert config_from_dict(tiny_config).method.name == "vilta"


def test_vilta_trains_and_evaluates_by_itm_over_all_pairs(tiny_config):
    tiny_config["method"] = {"name": "vilta", "fusion_layers": 1}
    tiny_config["model"]["unimodal"] = {"text_steps": 2, "batch_size": 8}
    tiny_config["eval"]["retrieval"] = {"k_test": "all", "batch_size": 8}
    cfg = config_from_dict(tiny_config)
    results = run_experiment(cfg, RunDir.create(cfg), log=lambda *_: None)
    assert results["retrieval"]["ranking"] == "ITM over all candidates" and results["retrieval"]["itc"] is None
    assert 0.0 <= results["retrieval"]["itm"]["r_mean"] <= 100.0


def test_vilta_saliency_is_the_image_cls_attention_over_text(tiny_config):
    method, tok = make(tiny_config)
    b = batch(tok)
    saliency = method.token_saliency(b.input_ids, b.attention_mask, b.images)
    torch.testing.assert_close(saliency.sum(1), torch.ones(4))
    assert (saliency[~b.attention_mask.bool()] == 0).all()
