"""Zero-shot image-text retrieval as ALBEF evaluates it (Sec. 5).

ITC similarities for all image-text pairs; then for each image the top-k texts are re-ranked
by the ITM score (and for each text the top-k images). TR ranks an image's best ground-truth
caption; IR ranks a caption's image.

Beside R@K, two continuous metrics with less sampling noise: the mean reciprocal rank (``mrr``,
percent; under ITM re-ranking, a true match outside the re-ranked top-k keeps its ITC order below
them) and the test ITC loss (``itc.loss``: mean -log p of the true match over the whole gallery at
the method's temperature, an image's captions pooled). ``itm_diagnostics`` gives the ROC AUC of
the matching score of each caption's true pair against a random other image and against the
hardest other image by ITC.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vlpbench.config import RetrievalEvalConfig
from vlpbench.data.datasets import RetrievalDataset
from vlpbench.method import VLPMethod
from vlpbench.stats import roc_auc
from vlpbench.zoo.tokenizer import TextTokenizer

RECALL_AT = (1, 5, 10)


def rank_of_first_match(scores: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """For each row, the 0-based position (by descending score) of its best-placed match."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return position.masked_fill(~match, scores.shape[1]).min(dim=1).values


def retrieval_metrics(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, text_to_image: torch.Tensor) -> dict:
    """TR/IR R@1/5/10 (percent) and their mean, from [images, texts] and [texts, images] scores."""
    num_images = scores_i2t.shape[0]
    image_ids = torch.arange(num_images, device=text_to_image.device)
    text_ranks = rank_of_first_match(scores_i2t, text_to_image[None, :] == image_ids[:, None])
    image_ranks = rank_of_first_match(scores_t2i, image_ids[None, :] == text_to_image[:, None])
    out = {}
    for k in RECALL_AT:
        out[f"txt_r{k}"] = 100.0 * (text_ranks < k).float().mean().item()
        out[f"img_r{k}"] = 100.0 * (image_ranks < k).float().mean().item()
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    out["mrr"] = 50.0 * ((1 / (text_ranks + 1.0)).mean().item() + (1 / (image_ranks + 1.0)).mean().item())
    return out


def below_reranked(scores: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
    """``scores`` (-inf outside each row's re-ranked top-k) with the other entries in ITC order
    below every re-ranked one: a full ranking for the mean reciprocal rank."""
    finite = torch.isfinite(scores)
    if finite.all():
        return scores
    offset = scores[finite].min() - sims.max() - 1.0
    return torch.where(finite, scores, sims + offset)


def contrastive_test_loss(sims: torch.Tensor, text_to_image: torch.Tensor, temperature: float) -> float:
    """Mean over both directions of -log p(true match) over the gallery, p the softmax of
    ``sims / temperature``; an image's captions are pooled (ALBEF's fine-tuning target)."""
    logits = sims.double() / temperature
    match = text_to_image[None, :] == torch.arange(sims.shape[0], device=sims.device)[:, None]
    i2t = logits.logsumexp(1) - logits.masked_fill(~match, float("-inf")).logsumexp(1)
    t2i = logits.T.logsumexp(1) - logits.T.masked_fill(~match.T, float("-inf")).logsumexp(1)
    return float((i2t.mean() + t2i.mean()) / 2)


def chance_metrics(text_to_image: torch.Tensor) -> dict:
    """Expected R@K of a random ranking (TR: any of an image's captions in the top K).

    Defined for every size: where K reaches the number of candidates, R@K is 100%.
    """
    num_texts, num_images = len(text_to_image), int(text_to_image.max()) + 1
    per_image = torch.bincount(text_to_image, minlength=num_images).tolist()
    out = {}
    for k in RECALL_AT:
        shown = min(k, num_texts)  # a ranking of n texts shows at most n of them
        miss = [math.comb(num_texts - c, shown) / math.comb(num_texts, shown) for c in per_image]
        out[f"txt_r{k}"] = 100.0 * (1 - sum(miss) / num_images)
        out[f"img_r{k}"] = 100.0 * min(1.0, k / num_images)
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    expected = {c: _expected_reciprocal_first(num_texts, c) for c in set(per_image)}
    text_mrr = sum(expected[c] for c in per_image) / num_images
    out["mrr"] = 50.0 * (text_mrr + _expected_reciprocal_first(num_images, 1))
    return out


def _expected_reciprocal_first(n: int, c: int) -> float:
    """E[1 / (first position of c marked items among n, randomly ordered)], positions from 1."""
    # P(first marked at position r) = C(n - r, c - 1) / C(n, c)
    return sum(math.comb(n - r, c - 1) / r for r in range(1, n - c + 2)) / math.comb(n, c)


@dataclass
class EncodedSplit:
    """Uni-modal states and contrastive embeddings (None for a method without them) of every image
    and text of a split."""
    image_states: torch.Tensor
    image_feats: torch.Tensor | None
    text_states: torch.Tensor
    text_feats: torch.Tensor | None
    attention_mask: torch.Tensor
    text_to_image: torch.Tensor

    def itc_similarities(self) -> torch.Tensor:
        return (self.image_feats @ self.text_feats.T).float()


def dataset_image_batches(dataset: RetrievalDataset, batch_size: int) -> Iterator[torch.Tensor]:
    """The split's images, decoded and stacked a batch at a time."""
    for start in range(0, len(dataset.images), batch_size):
        end = min(start + batch_size, len(dataset.images))
        yield torch.stack([dataset.image_tensor(i) for i in range(start, end)])


@torch.no_grad()
def encode_split(method: VLPMethod, image_batches: Iterable[torch.Tensor], texts: list[str],
                 text_to_image: torch.Tensor, tokenizer: TextTokenizer, batch_size: int, max_text_len: int,
                 device: torch.device) -> EncodedSplit:
    """Encode every image (given in batches) and every text of a split, with their contrastive
    embeddings where the method declares them."""
    embed = method.config.capabilities().contrastive_embedding
    image_states, image_feats = [], []
    for batch in image_batches:
        out = method.encode_image(batch.to(device))
        image_states.append(out.states)
        image_feats += [method.image_embedding(out)] if embed else []
    input_ids, attention_mask = tokenizer(texts, max_text_len)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    text_states, text_feats = [], []
    for start in range(0, len(texts), batch_size):
        states = method.encode_text(input_ids[start:start + batch_size], attention_mask[start:start + batch_size])
        text_states.append(states)
        text_feats += [method.text_embedding(states)] if embed else []
    return EncodedSplit(torch.cat(image_states), torch.cat(image_feats) if embed else None, torch.cat(text_states),
                        torch.cat(text_feats) if embed else None, attention_mask, text_to_image.to(device))


def pair_scores(method: VLPMethod, split: EncodedSplit, image_idx: torch.Tensor, text_idx: torch.Tensor,
                batch_size: int) -> torch.Tensor:
    """ITM scores of the (image, text) pairs given by two index vectors, in batches of texts of
    similar length, each cut to its longest text (padding is masked, so the scores are unchanged)."""
    scores = torch.empty(image_idx.shape[0], device=image_idx.device)
    lengths = split.attention_mask.sum(1)[text_idx]
    order = torch.argsort(lengths, stable=True)
    for start in range(0, order.shape[0], batch_size):
        part = order[start:start + batch_size]
        t, i, width = text_idx[part], image_idx[part], int(lengths[part].max())
        scores[part] = method.match_score(split.text_states[t, :width], split.attention_mask[t, :width],
                                          split.image_states[i]).float()
    return scores


class PairScorer:
    """ITM scores of pairs of one split, each pair fused once however often it is asked for (the
    two re-ranking directions and the diagnostics share most of their pairs)."""

    def __init__(self, method: VLPMethod, split: EncodedSplit, batch_size: int):
        self.method, self.split, self.batch_size = method, split, batch_size
        self.num_texts = split.text_states.shape[0]
        device = split.text_states.device
        self.keys = torch.empty(0, dtype=torch.long, device=device)  # sorted image * num_texts + text
        self.values = torch.empty(0, device=device)

    def __call__(self, image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        keys = image_idx * self.num_texts + text_idx
        new = torch.unique(keys)
        new = new[~torch.isin(new, self.keys)]
        if new.numel():
            scores = pair_scores(self.method, self.split, new // self.num_texts, new % self.num_texts,
                                 self.batch_size)
            self.keys, order = torch.sort(torch.cat([self.keys, new]))
            self.values = torch.cat([self.values, scores])[order]
        return self.values[torch.searchsorted(self.keys, keys)]


def _topk_rerank(scorer: PairScorer, sims: torch.Tensor, k: int, rows_are_images: bool) -> torch.Tensor:
    """ITM scores for each row's top-k columns by ``sims``, -inf elsewhere."""
    top_idx = sims.topk(min(k, sims.shape[1]), dim=1).indices
    rows = torch.arange(sims.shape[0], device=sims.device)[:, None].expand_as(top_idx).reshape(-1)
    cols = top_idx.reshape(-1)
    image_idx, text_idx = (rows, cols) if rows_are_images else (cols, rows)
    out = torch.full_like(sims, float("-inf"))
    out[rows, cols] = scorer(image_idx, text_idx)
    return out


def _all_pairs(scorer: PairScorer) -> torch.Tensor:
    """[images, texts] ITM scores of every pair, each computed once for both directions."""
    num_images, num_texts = scorer.split.image_states.shape[0], scorer.num_texts
    device = scorer.split.text_states.device
    image_idx = torch.arange(num_images, device=device).repeat_interleave(num_texts)
    text_idx = torch.arange(num_texts, device=device).repeat(num_images)
    return scorer(image_idx, text_idx).view(num_images, num_texts)


@contextmanager
def eval_mode(method: VLPMethod) -> Iterator[None]:
    """Evaluation mode (no dropout) for the block, then the method's previous mode."""
    was_training = method.training
    method.eval()
    try:
        yield
    finally:
        method.train(was_training)


def ranking_name(k_test: int | str, matching: bool = True) -> str:
    if not matching:
        return "ITC (the method has no matching score)"
    return "ITM over all candidates" if k_test == "all" else f"ITC top-{k_test}, re-ranked by ITM"


@torch.no_grad()
def evaluate_retrieval(method: VLPMethod, dataset: RetrievalDataset, tokenizer: TextTokenizer,
                       cfg: RetrievalEvalConfig, max_text_len: int, device: torch.device) -> dict:
    """{"itc": metrics from similarities alone, "itm": metrics of the ITM ranking, "chance": ...}.

    ``k_test: all`` scores every image-text pair with ITM (for methods without a contrastive
    embedding); otherwise ITM re-ranks each query's top-k ITC candidates, as ALBEF does. What the
    method's capabilities lack is None: "itc" without a contrastive embedding, "itm" (and its
    diagnostics) without a matching score; "ranking" says which ranking was used.
    ``max_images``: only the first that many images of ``dataset`` and their captions.
    ``fold_images``: disjoint galleries of that many images, each evaluated alone; every number is
    the folds' mean, and ``folds`` lists each fold's r_mean and their standard deviation.
    """
    start = time.perf_counter()
    if cfg.max_images:
        dataset = dataset.head(cfg.max_images)
    if not cfg.fold_images:
        return {**evaluate_gallery(method, dataset, tokenizer, cfg, max_text_len, device),
                "seconds": round(time.perf_counter() - start, 1)}
    count = len(dataset.images) // cfg.fold_images
    if count == 0:
        raise ValueError(f"eval.retrieval.fold_images: {cfg.fold_images}, but the test split has "
                         f"{len(dataset.images)} images")
    folds = [evaluate_gallery(method, dataset.subset(i * cfg.fold_images, (i + 1) * cfg.fold_images), tokenizer,
                              cfg, max_text_len, device) for i in range(count)]
    return {**mean_over_folds(folds), "seconds": round(time.perf_counter() - start, 1)}


def mean_over_folds(folds: list[dict]) -> dict:
    """One result whose numbers are the folds' means (counts summed), with each fold's r_mean."""
    def mean(values: list):
        if isinstance(values[0], dict):
            return {key: mean([v[key] for v in values]) for key in values[0]}
        if all(v == values[0] for v in values):  # settings (k_test, ranking), and equal numbers
            return values[0]
        if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            return sum(values) / len(values)
        return values[0]
    out = mean(folds)
    out["num_images"], out["num_texts"] = sum(f["num_images"] for f in folds), sum(f["num_texts"] for f in folds)
    per_fold = {part: [f[part]["r_mean"] for f in folds] for part in ("itm", "itc") if folds[0][part]}
    out["folds"] = {"count": len(folds), "images": folds[0]["num_images"],
                    **{f"{part}_r_mean": values for part, values in per_fold.items()},
                    **{f"{part}_r_mean_std": statistics.stdev(values) if len(values) > 1 else 0.0
                       for part, values in per_fold.items()}}
    return out


def evaluate_gallery(method: VLPMethod, dataset: RetrievalDataset, tokenizer: TextTokenizer,
                     cfg: RetrievalEvalConfig, max_text_len: int, device: torch.device) -> dict:
    """``evaluate_retrieval`` on one gallery: every image and caption of ``dataset``."""
    can = method.config.capabilities()
    with eval_mode(method):
        split = encode_split(method, dataset_image_batches(dataset, cfg.batch_size), dataset.texts,
                             dataset.text_to_image, tokenizer, cfg.batch_size, max_text_len, device)
        sims = split.itc_similarities() if can.contrastive_embedding else None
        itm, matching = (matching_ranking(PairScorer(method, split, cfg.batch_size), split, sims, cfg)
                         if can.matching else (None, None))
    itc = None
    if sims is not None:
        itc = {**retrieval_metrics(sims, sims.T, split.text_to_image),
               "loss": contrastive_test_loss(sims, split.text_to_image, itc_temperature(method))}
    return {"itc": itc, "itm": itm, "itm_diagnostics": matching,
            "chance": chance_metrics(dataset.text_to_image), "ranking": ranking_name(cfg.k_test, can.matching),
            "num_images": len(dataset.images), "num_texts": len(dataset.texts), "k_test": cfg.k_test}


def matching_ranking(scorer: PairScorer, split: EncodedSplit, sims: torch.Tensor | None,
                     cfg: RetrievalEvalConfig) -> tuple[dict, dict | None]:
    """Metrics of the ITM ranking (every pair, or each query's top-k ITC candidates re-ranked) and
    the matching score's diagnostics."""
    if cfg.k_test == "all":
        scores_i2t = _all_pairs(scorer)
        scores_t2i = scores_i2t.T
    else:
        scores_i2t = _topk_rerank(scorer, sims, cfg.k_test, rows_are_images=True)
        scores_t2i = _topk_rerank(scorer, sims.T.contiguous(), cfg.k_test, rows_are_images=False)
    if sims is not None:  # candidates outside a query's top-k follow in ITC order
        scores_i2t, scores_t2i = below_reranked(scores_i2t, sims), below_reranked(scores_t2i, sims.T)
    return (retrieval_metrics(scores_i2t, scores_t2i, split.text_to_image),
            itm_diagnostics(scorer, split, sims) if cfg.itm_diagnostics else None)


DEFAULT_TEMPERATURE = 0.07  # ALBEF's initial ITC temperature, for methods that have none of their own


def itc_temperature(method: VLPMethod) -> float:
    temperature = method.itc_temperature()
    return DEFAULT_TEMPERATURE if temperature is None else float(temperature)


def itm_diagnostics(scorer: PairScorer, split: EncodedSplit, sims: torch.Tensor | None) -> dict:
    """ROC AUC of the matching score: every caption's true pair against the caption with a random
    other image, and (given ITC similarities) with the other image ITC ranks highest."""
    num_images, device = split.image_states.shape[0], split.text_to_image.device
    texts, true = torch.arange(len(split.text_to_image), device=device), split.text_to_image
    shift = torch.randint(1, num_images, (len(true),), generator=torch.Generator().manual_seed(0)).to(device)
    positive = scorer(true, texts).cpu()
    out = {"auc_random_negatives": roc_auc(positive, scorer((true + shift) % num_images, texts).cpu())}
    if sims is not None:
        others = sims.T.masked_fill(true[:, None] == torch.arange(num_images, device=device)[None], float("-inf"))
        out["auc_hard_negatives"] = roc_auc(positive, scorer(others.argmax(1), texts).cpu())
    return out


class LearningCurve:
    """Cheap ITC-only retrieval on a fixed subset of the test split, for metrics during training.

    The subset's images are decoded once; each call encodes them and the captions again.
    """

    def __init__(self, dataset: RetrievalDataset, num_images: int, tokenizer: TextTokenizer, batch_size: int,
                 max_text_len: int, device: torch.device):
        subset = dataset.head(num_images)
        self.images = torch.cat(list(dataset_image_batches(subset, batch_size)))
        self.texts, self.text_to_image = subset.texts, subset.text_to_image
        self.tokenizer, self.batch_size, self.max_text_len, self.device = tokenizer, batch_size, max_text_len, device

    @torch.no_grad()
    def __call__(self, method: VLPMethod) -> dict[str, float]:
        with eval_mode(method):
            split = encode_split(method, self.images.split(self.batch_size), self.texts, self.text_to_image,
                                 self.tokenizer, self.batch_size, self.max_text_len, self.device)
        sims = split.itc_similarities()
        metrics = retrieval_metrics(sims, sims.T, split.text_to_image)
        return {f"curve_itc_{k}": metrics[k] for k in ("txt_r1", "img_r1", "r_mean")}
