"""How well a trained model's matching score separates clean pairs from known-noisy ones.

LightVLP's gate p (Eq. 5) should be high for matched pairs and low for unmatched ones, so that
the decoders read cross-modal states only where the text describes the image (the paper's
Fig. 4). The embedded dataset marks its noisy pre-training pairs (``noise``: a mismatched caption,
or one with a wrong colour), which makes the separation measurable: the ROC AUC of the score
between clean and noisy pairs. Every method has an ITM score, so the AUC compares methods too;
the distribution of p is reported for methods whose score is a gate (``Capabilities.gate``).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from vlpbench.data.datasets import ImageCaptions, RetrievalDataset
from vlpbench.data.transforms import ImageTransform
from vlpbench.evaluation import dataset_image_batches, encode_split, eval_mode, pair_scores
from vlpbench.method import VLPMethod
from vlpbench.stats import roc_auc
from vlpbench.zoo.tokenizer import TextTokenizer

CLEAN = "clean"


P_BINS = 20  # the gate histogram's bins over [0, 1]


def quantiles(values: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.double)).tolist()
    return {"mean": float(values.double().mean()), "q10": q[0], "median": q[1], "q90": q[2]}


@torch.no_grad()
def matching_separation(method: VLPMethod, entries: list[ImageCaptions], tokenizer: TextTokenizer, image_size: int,
                        max_text_len: int, batch_size: int, device: torch.device) -> dict:
    """Scores of every (image, caption) pair of ``entries`` grouped by noise kind; AUC of clean vs
    each noisy kind and vs all noisy pairs; where the method's score is a gate, the quantiles of p
    and their histogram (``P_BINS`` bins over [0, 1]), by kind."""
    dataset = RetrievalDataset(entries, ImageTransform(image_size))
    kinds = [e.noise or CLEAN for e in entries for _ in e.captions]
    with eval_mode(method):
        split = encode_split(method, dataset_image_batches(dataset, batch_size), dataset.texts, dataset.text_to_image,
                             tokenizer, batch_size, max_text_len, device)
        scores = pair_scores(method, split, split.text_to_image, torch.arange(len(kinds), device=device),
                             batch_size).cpu()
    groups = defaultdict(list)
    for kind, score in zip(kinds, scores):
        groups[kind].append(score)
    groups = {kind: torch.stack(values) for kind, values in groups.items()}
    clean = groups.get(CLEAN, torch.empty(0))
    noisy = [v for k, v in groups.items() if k != CLEAN]
    auc = {f"clean_vs_{kind}": roc_auc(clean, values) for kind, values in groups.items() if kind != CLEAN}
    auc["clean_vs_noisy"] = roc_auc(clean, torch.cat(noisy)) if noisy else float("nan")
    result = {"num_pairs": {kind: len(v) for kind, v in groups.items()}, "auc": auc}
    if method.config.capabilities().gate:
        probability = method.match_probability(scores)
        by_kind = {kind: probability[[k == kind for k in kinds]] for kind in groups}
        result["p"] = {kind: quantiles(values) for kind, values in by_kind.items()}
        result["p_histogram"] = {kind: torch.histc(values.float(), P_BINS, 0.0, 1.0).long().tolist()
                                 for kind, values in by_kind.items()}
    return result
