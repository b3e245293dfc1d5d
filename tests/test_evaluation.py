import math
from types import SimpleNamespace

import pytest
import torch

from vlpbench.config import Capabilities
from vlpbench.evaluation import (below_reranked, chance_metrics, contrastive_test_loss, rank_of_first_match,
                               retrieval_metrics)


def test_recall_at_k_on_a_hand_made_matrix():
    # 3 images, 2 captions each: texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2])
    i2t = torch.tensor([
        [0.9, 0.1, 0.8, 0.0, 0.0, 0.0],  # image 0: best caption (text 0) at rank 0
        [0.9, 0.8, 0.1, 0.7, 0.0, 0.0],  # image 1: texts 0, 1 outrank text 3 -> rank 2
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # image 2: text 4 at rank 4
    ])
    t2i = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 -> image 0 at rank 0
        [0.1, 0.9, 0.0],  # text 1 -> image 0 at rank 1
        [0.0, 0.9, 0.1],  # rank 0
        [0.5, 0.4, 0.9],  # rank 2
        [0.0, 0.1, 0.9],  # rank 0
        [0.9, 0.1, 0.0],  # rank 2
    ])
    m = retrieval_metrics(i2t, t2i, text_to_image)
    assert abs(m["txt_r1"] - 100 / 3) < 1e-4
    assert abs(m["txt_r5"] - 100.0) < 1e-9  # ranks 0, 2, 4 are all < 5
    assert abs(m["img_r1"] - 50.0) < 1e-9  # ranks 0,1,0,2,0,2
    assert abs(m["img_r5"] - 100.0) < 1e-9
    assert abs(m["r_mean"] - (m["txt_r_mean"] + m["img_r_mean"]) / 2) < 1e-9


def test_rank_of_first_match_uses_the_best_placed_match():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    match = torch.tensor([[True, False, True, False]])
    assert rank_of_first_match(scores, match).tolist() == [2]


def test_chance_level():
    text_to_image = torch.arange(10).repeat_interleave(5)  # 10 images x 5 captions
    c = chance_metrics(text_to_image)
    assert abs(c["img_r1"] - 10.0) < 1e-9
    assert abs(c["txt_r1"] - 10.0) < 1e-9  # 5 of 50 texts
    assert abs(c["txt_r5"] - 100 * (1 - (45 * 44 * 43 * 42 * 41) / (50 * 49 * 48 * 47 * 46))) < 1e-9


def test_chance_level_is_defined_for_tiny_test_sets():
    # 2 images, texts 0,1 -> image 0 and text 2 -> image 1. TR@1: image 0 is hit by 2 of 3 texts (2/3),
    # image 1 by 1 of 3 (1/3): mean 50%. With K >= 3 candidates every ranking shows all of them: 100%.
    c = chance_metrics(torch.tensor([0, 0, 1]))
    assert abs(c["txt_r1"] - 50.0) < 1e-9 and c["txt_r5"] == c["txt_r10"] == 100.0
    assert c["img_r1"] == 50.0 and c["img_r5"] == c["img_r10"] == 100.0
    single = chance_metrics(torch.tensor([0]))  # one image, one caption: every ranking is right
    assert single["r_mean"] == 100.0


def test_recall_is_100_where_k_reaches_the_candidates():
    text_to_image = torch.tensor([0, 1])
    scores = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # both wrong at rank 1, right at rank 2
    m = retrieval_metrics(scores, scores, text_to_image)
    assert m["txt_r1"] == m["img_r1"] == 0.0
    assert m["txt_r5"] == m["txt_r10"] == m["img_r5"] == m["img_r10"] == 100.0


class TableMethod:
    """A stand-in method whose ITM score of (text t, image i) is ``table[t, i]`` and whose ITC
    embedding ranks every pair the same (all features equal): only the ITM ranking can succeed."""

    training = False
    config = SimpleNamespace(capabilities=Capabilities)  # every capability a retrieval evaluation reads

    def __init__(self, table):
        self.table, self.calls = table, 0

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def encode_image(self, images):
        from vlpbench.zoo.vision import VisionOutput
        index = images[:, 0, 0, 0].long()[:, None, None].float()
        return VisionOutput(states=index, cls=index[:, 0])

    def encode_text(self, input_ids, attention_mask):
        return input_ids[:, :, None].float()

    def image_embedding(self, image):
        return torch.ones(image.cls.shape[0], 4) / 2

    def text_embedding(self, text_states):
        return torch.ones(text_states.shape[0], 4) / 2

    def itc_temperature(self):
        return None

    def match_score(self, text_states, attention_mask, image_states):
        self.calls += text_states.shape[0]
        return self.table[text_states[:, 0, 0].long(), image_states[:, 0, 0].long()]


class IndexDataset:
    def __init__(self, num_images, captions_per_image):
        self.images = list(range(num_images))
        self.texts = [f"t{k}" for k in range(num_images * captions_per_image)]
        self.text_to_image = torch.arange(num_images).repeat_interleave(captions_per_image)

    def image_tensor(self, index):
        return torch.full((3, 2, 2), float(self.images[index]))  # the image's global id

    def head(self, num_images):
        return self.subset(0, num_images)

    def subset(self, start, stop):
        per_image = len(self.texts) // len(self.images)
        out = IndexDataset(stop - start, per_image)
        out.images = self.images[start:stop]
        out.texts = self.texts[start * per_image:stop * per_image]
        return out


def index_tokenizer(texts, max_len):
    ids = torch.tensor([[int(t[1:])] for t in texts])
    return ids, torch.ones_like(ids)


def test_k_test_all_ranks_every_candidate_by_itm():
    from vlpbench.config import RetrievalEvalConfig
    from vlpbench.evaluation import evaluate_retrieval

    data = IndexDataset(num_images=6, captions_per_image=2)
    # ITM puts text t's image first for t even, second (after image i+1) for t odd
    table = torch.zeros(12, 6)
    for t, i in enumerate(data.text_to_image.tolist()):
        table[t, i] = 1.0 if t % 2 == 0 else 0.5
        table[t, (i + 1) % 6] = 0.9 if t % 2 else 0.0
    method = TableMethod(table)
    out = evaluate_retrieval(method, data, index_tokenizer, RetrievalEvalConfig(k_test="all", batch_size=5,
                                                                                      itm_diagnostics=False), 8, "cpu")
    assert method.calls == 6 * 12  # every pair once, shared by both directions
    assert out["ranking"] == "ITM over all candidates"
    assert out["itm"]["img_r1"] == 50.0 and out["itm"]["img_r5"] == 100.0  # even texts rank 1, odd rank 2
    assert out["itm"]["txt_r1"] == 100.0  # each image's even caption scores 1.0, the highest
    # with k_test 1 the candidates come from the (uninformative) ITC similarities, which tie everywhere
    out_k1 = evaluate_retrieval(TableMethod(table), data, index_tokenizer, RetrievalEvalConfig(k_test=1), 8, "cpu")
    assert out_k1["ranking"] == "ITC top-1, re-ranked by ITM" and out_k1["itm"]["img_r1"] < 50.0


def test_max_images_evaluates_the_first_images_and_their_captions_only():
    from vlpbench.config import RetrievalEvalConfig
    from vlpbench.evaluation import evaluate_retrieval

    data = IndexDataset(num_images=6, captions_per_image=2)
    table = torch.eye(6).repeat_interleave(2, dim=0)  # each text matches its own image only
    method = TableMethod(table)
    settings = RetrievalEvalConfig(k_test="all", max_images=3, itm_diagnostics=False)
    out = evaluate_retrieval(method, data, index_tokenizer, settings, 8, "cpu")
    assert method.calls == 3 * 6 and out["num_images"] == 3 and out["num_texts"] == 6
    assert out["itm"]["txt_r1"] == out["itm"]["img_r1"] == 100.0


# ---- continuous metrics (issue 21.3) on a constructed score matrix ----
SIMS = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.3, 0.4, 0.8, 0.7]])  # 2 images x 4 texts
TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 1])


def test_mean_reciprocal_rank_on_a_hand_made_score_matrix():
    # TR: each image's first true caption is ranked first (1, 1); IR: texts 0, 2, 3 find their
    # image first, text 1 ranks image 1 (0.4) above its image 0 (0.1): 1/2 -> IR MRR 0.875
    metrics = retrieval_metrics(SIMS, SIMS.T, TEXT_TO_IMAGE)
    assert metrics["mrr"] == pytest.approx(50.0 * (1.0 + 0.875))


def test_itc_test_loss_is_the_mean_negative_log_probability_of_the_true_match():
    def nll(row, true):
        return math.log(sum(math.exp(v) for v in row)) - math.log(sum(math.exp(row[i]) for i in true))
    i2t = [nll(SIMS[0].tolist(), [0, 1]), nll(SIMS[1].tolist(), [2, 3])]  # an image's captions pooled
    t2i = [nll(SIMS[:, t].tolist(), [int(TEXT_TO_IMAGE[t])]) for t in range(4)]
    expected = (sum(i2t) / 2 + sum(t2i) / 4) / 2
    assert contrastive_test_loss(SIMS, TEXT_TO_IMAGE, temperature=1.0) == pytest.approx(expected)
    assert contrastive_test_loss(SIMS * 2, TEXT_TO_IMAGE, 2.0) == pytest.approx(expected)  # only sims / T counts


def test_candidates_outside_the_reranked_top_k_keep_their_itc_order_below_them():
    scores = torch.tensor([[5.0, float("-inf"), 3.0, float("-inf")]])
    full = below_reranked(scores, torch.tensor([[0.1, 0.9, 0.2, 0.3]]))
    assert full.argsort(dim=1, descending=True).tolist() == [[0, 2, 1, 3]]


def test_chance_mean_reciprocal_rank():
    # 4 images, 1 caption each: E[1/r] for a uniform r in 1..4 = (1 + 1/2 + 1/3 + 1/4) / 4 both ways
    chance = chance_metrics(torch.arange(4))
    assert chance["mrr"] == pytest.approx(100.0 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_folds_are_disjoint_galleries_and_the_result_is_their_mean():
    from vlpbench.config import RetrievalEvalConfig
    from vlpbench.evaluation import evaluate_retrieval

    data = IndexDataset(num_images=6, captions_per_image=2)
    table = torch.zeros(12, 6)
    for t, i in enumerate(data.text_to_image.tolist()):
        table[t, i] = 1.0 if i < 3 else 0.0  # images 0-2 are ranked by ITM, images 3-5 are not
        table[t, (i + 1) % 6] = 0.5
    settings = RetrievalEvalConfig(k_test="all", fold_images=3, itm_diagnostics=False)
    out = evaluate_retrieval(TableMethod(table), data, index_tokenizer, settings, 8, "cpu")
    first, second = (evaluate_retrieval(TableMethod(table), data.subset(a, a + 3), index_tokenizer,
                                        RetrievalEvalConfig(k_test="all", itm_diagnostics=False), 8, "cpu")
                     for a in (0, 3))
    assert first["itm"]["img_r1"] == 100.0 and second["itm"]["img_r1"] < 100.0
    assert out["folds"]["count"] == 2 and out["folds"]["images"] == 3
    assert out["folds"]["itm_r_mean"] == [first["itm"]["r_mean"], second["itm"]["r_mean"]]
    assert out["itm"]["r_mean"] == pytest.approx((first["itm"]["r_mean"] + second["itm"]["r_mean"]) / 2)
    assert out["folds"]["itm_r_mean_std"] == pytest.approx(abs(first["itm"]["r_mean"] - second["itm"]["r_mean"])
                                                           / math.sqrt(2))
    assert out["num_images"] == 6 and out["chance"]["r_mean"] == first["chance"]["r_mean"]


def test_pair_scorer_fuses_each_pair_once():
    from vlpbench.evaluation import EncodedSplit, PairScorer

    data = IndexDataset(num_images=3, captions_per_image=2)
    table = torch.arange(18.0).view(6, 3)  # text t, image i -> 3t + i
    method = TableMethod(table)
    states = torch.arange(6.0)[:, None, None]
    split = EncodedSplit(torch.arange(3.0)[:, None, None], None, states, None, torch.ones(6, 1, dtype=torch.long),
                         data.text_to_image)
    scorer = PairScorer(method, split, batch_size=2)
    first = scorer(torch.tensor([0, 2, 0]), torch.tensor([0, 1, 0]))  # (image 0, text 0) twice
    assert first.tolist() == [0.0, 5.0, 0.0] and method.calls == 2
    second = scorer(torch.tensor([2, 1]), torch.tensor([1, 5]))  # one known pair, one new
    assert second.tolist() == [5.0, 16.0] and method.calls == 3 and len(scorer.keys) == 3


@pytest.mark.parametrize("name", ["albef", "lightvlp"])
def test_pair_scores_cut_padding_without_changing_a_score(tiny_config, name):
    from vlpbench.config import config_from_dict
    from vlpbench.evaluation import dataset_image_batches, encode_split, pair_scores
    from vlpbench.pipeline import build_method
    from vlpbench.zoo import train_wordpiece

    method_keys = {"albef": {"name": "albef", "embed_dim": 32, "queue_size": 16},
                   "lightvlp": {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "cross_layers": 1,
                                "decoder_layers": 1, "decoder_width": 16, "decoder_heads": 2}}[name]
    cfg = config_from_dict({**tiny_config, "method": method_keys})
    texts = ["a red circle", "a big blue box at the top right of a plain gray background", "a box", "two circles"]
    tok = train_wordpiece(texts * 5, vocab_size=60)
    method = build_method(cfg, tok).eval()
    data = IndexDataset(num_images=2, captions_per_image=2)
    data.image_tensor = lambda i: torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))
    with torch.no_grad():
        split = encode_split(method, dataset_image_batches(data, 2), texts, data.text_to_image, tok, 8, 24, "cpu")
        image_idx, text_idx = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 2, 3])
        batched = pair_scores(method, split, image_idx, text_idx, batch_size=4)
        alone = torch.stack([method.match_score(split.text_states[t:t + 1], split.attention_mask[t:t + 1],
                                                split.image_states[i:i + 1]).float()[0]
                             for i, t in zip(image_idx.tolist(), text_idx.tolist())])
    assert int(split.attention_mask.sum(1).min()) < split.attention_mask.shape[1]  # some texts are padded
    assert torch.allclose(batched, alone, atol=1e-5)
