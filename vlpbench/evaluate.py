"""Zero-shot image-text retrieval as ALBEF evaluates it (Sec. 5).

ITC similarities for all image-text pairs; then for each image the top-k texts are re-ranked
by the ITM score (and for each text the top-k images). TR ranks an image's best ground-truth
caption; IR ranks a caption's image.
"""

from __future__ import annotations

import math

import torch

from vlpbench.config import RetrievalEvalConfig
from vlpbench.data.datasets import RetrievalDataset
from vlpbench.method import VLPMethod
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
    return out


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
    return out


def _topk_rerank(method: VLPMethod, sims: torch.Tensor, k: int, batch_size: int, pair_states) -> torch.Tensor:
    """Scores with ITM for each row's top-k columns and -inf elsewhere."""
    top_idx = sims.topk(min(k, sims.shape[1]), dim=1).indices
    rows = torch.arange(sims.shape[0], device=sims.device)[:, None].expand_as(top_idx).reshape(-1)
    cols = top_idx.reshape(-1)
    scores = torch.empty(rows.shape[0], device=sims.device)
    for start in range(0, rows.shape[0], batch_size):
        part = slice(start, start + batch_size)
        scores[part] = method.match_score(*pair_states(rows[part], cols[part])).float()
    out = torch.full_like(sims, float("-inf"))
    out[rows, cols] = scores
    return out


@torch.no_grad()
def evaluate_retrieval(method: VLPMethod, dataset: RetrievalDataset, tokenizer: TextTokenizer,
                       cfg: RetrievalEvalConfig, max_text_len: int, device: torch.device) -> dict:
    """{"itc": metrics from similarities alone, "itm": metrics after top-k ITM re-ranking, "chance": ...}."""
    was_training = method.training
    method.eval()
    image_states, image_feats = [], []
    for start in range(0, len(dataset.images), cfg.batch_size):
        images = torch.stack([dataset.image_tensor(i) for i in range(start, min(start + cfg.batch_size, len(dataset.images)))])
        out = method.encode_image(images.to(device))
        image_states.append(out.states)
        image_feats.append(method.image_embedding(out))
    input_ids, attention_mask = tokenizer(dataset.texts, max_text_len)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    text_states, text_feats = [], []
    for start in range(0, len(dataset.texts), cfg.batch_size):
        states = method.encode_text(input_ids[start:start + cfg.batch_size], attention_mask[start:start + cfg.batch_size])
        text_states.append(states)
        text_feats.append(method.text_embedding(states))
    image_states, text_states = torch.cat(image_states), torch.cat(text_states)
    sims = (torch.cat(image_feats) @ torch.cat(text_feats).T).float()
    text_to_image = dataset.text_to_image.to(device)

    def image_text_pairs(image_idx, text_idx):
        return text_states[text_idx], attention_mask[text_idx], image_states[image_idx]

    scores_i2t = _topk_rerank(method, sims, cfg.k_test, cfg.batch_size, image_text_pairs)
    scores_t2i = _topk_rerank(method, sims.T.contiguous(), cfg.k_test, cfg.batch_size,
                              lambda t, i: image_text_pairs(i, t))
    method.train(was_training)
    return {"itc": retrieval_metrics(sims, sims.T, text_to_image),
            "itm": retrieval_metrics(scores_i2t, scores_t2i, text_to_image),
            "chance": chance_metrics(dataset.text_to_image),
            "num_images": len(dataset.images), "num_texts": len(dataset.texts), "k_test": cfg.k_test}
