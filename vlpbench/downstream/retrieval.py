"""Image-text retrieval fine-tuning (ALBEF Sec. 5): ITC in which every caption of the same image is
a positive (probability 1 / #positives), and ITM whose negatives are drawn from the ITC
similarities (never from the same image); evaluated as zero-shot retrieval is (ITC top-k
re-ranked by ITM, or ITM over all pairs). A test split from another dataset (``data.test``) is
ALBEF Table 3's zero-shot transfer.

Choices: in-batch ITC without queues or momentum distillation (ALBEF fine-tunes with both); methods
without a contrastive embedding (ViLTA) train ITM alone with uniform negatives from other images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pydantic import Field

from vlpbench.config import RetrievalEvalConfig, TaskConfig
from vlpbench.data.datasets import ImageCaptions, RetrievalDataset, parse_image_captions
from vlpbench.downstream.common import DownstreamTask, KeyedDataset, TaskBatch, TaskModel
from vlpbench.evaluation import evaluate_retrieval
from vlpbench.losses import itm_pairs, multi_positive_contrastive_loss, sample_itm_negatives
from vlpbench.method import Progress, VLPMethod
from vlpbench.registry import register_task


class MatchingFinetuneConfig(TaskConfig):
    """Retrieval fine-tuning (ALBEF Sec. 5): ITC with every caption of an image a positive, and ITM."""
    hard_negatives: bool = True  # ITM negatives from the ITC similarities (never the same image); false: uniform
    temp: float = Field(0.07, gt=0.0)  # ITC temperature for methods that do not learn one (fixed)


class RetrievalTaskConfig(MatchingFinetuneConfig):
    eval: RetrievalEvalConfig = RetrievalEvalConfig()


class MatchingFinetune(TaskModel):
    """ITC (multiple positives) + ITM over the pairs of a batch; ``image_index`` says which
    captions share an image."""

    def __init__(self, method: VLPMethod, cfg: MatchingFinetuneConfig):
        super().__init__(method)
        self.contrastive = method.config.capabilities().contrastive_embedding
        self.hard_negatives = cfg.hard_negatives and self.contrastive
        self.fixed_temp = cfg.temp

    def temperature(self) -> torch.Tensor | float:
        learned = self.method.itc_temperature()
        return self.fixed_temp if learned is None else learned.clamp(0.001, 0.5)

    def forward(self, batch: TaskBatch, progress: Progress) -> dict[str, torch.Tensor]:
        method, losses = self.method, {}
        image = method.encode_image(batch.images)
        text = method.encode_text(batch.input_ids, batch.attention_mask)
        positives = batch.image_index[:, None] == batch.image_index[None, :]
        sim = None
        if self.contrastive:
            image_feat, text_feat = method.image_embedding(image), method.text_embedding(text)
            losses["loss_itc"] = multi_positive_contrastive_loss(image_feat, text_feat, positives, self.temperature())
            sim = (image_feat @ text_feat.T).detach()
        negatives = sample_itm_negatives(sim, None if sim is None else sim.T, len(batch), self.hard_negatives,
                                         batch.images.device, positives)
        texts, masks, images, labels = itm_pairs(text, batch.attention_mask, image.states, *negatives)
        losses["loss_itm"] = F.cross_entropy(method.match_logits(texts, masks, images).float(), labels)
        losses["loss"] = sum(losses.values())
        return losses


class CaptionPairs:
    """(image, caption) pairs of ALBEF-format caption records, with each image's index."""

    def __init__(self, entries: list[ImageCaptions]):
        images = {}
        self.pairs = [(e.image, c, images.setdefault(e.image, len(images))) for e in entries for c in e.captions]


class MatchingTask(DownstreamTask):
    """Fine-tuning on image-text pairs with ITC + ITM (retrieval, and grounding's training)."""

    def train_dataset(self) -> KeyedDataset:
        pairs = CaptionPairs(self.open_records("train", parse_image_captions)).pairs
        return KeyedDataset(pairs, lambda pair, generator: (self.image(pair[0], generator), pair[1], pair[2]))

    def collate(self, items: list) -> TaskBatch:
        images, captions, index = zip(*items)
        input_ids, attention_mask = self.tokenize(list(captions))
        return TaskBatch(torch.stack(images), input_ids, attention_mask, image_index=torch.tensor(index))

    def build_model(self, method: VLPMethod) -> MatchingFinetune:
        return MatchingFinetune(method, self.task_cfg)


@register_task
class RetrievalTask(MatchingTask):
    name = "retrieval"
    config_class = RetrievalTaskConfig

    def evaluate(self, model: MatchingFinetune, device: torch.device) -> dict:
        method, cfg = model.method, self.task_cfg
        source = self.source("test")
        dataset = RetrievalDataset(self.open_records("test", parse_image_captions), self.transform)
        contrastive = method.config.capabilities().contrastive_embedding
        eval_cfg = cfg.eval if contrastive else cfg.eval.model_copy(update={"k_test": "all"})
        result = evaluate_retrieval(method, dataset, self.tokenizer, eval_cfg, self.cfg.data.max_text_len, device)
        ranked = result["itm"] or result["itc"]  # (a method without a matching score ranks by ITC)
        metrics = {key: ranked[key] for key in ("r_mean", "txt_r_mean", "img_r_mean", "txt_r1", "img_r1")}
        chance = {key: result["chance"][key] for key in metrics}
        if result["itc"] is not None and result["itm"] is not None:
            metrics["itc_r_mean"], chance["itc_r_mean"] = result["itc"]["r_mean"], result["chance"]["r_mean"]
        return {"metrics": metrics, "baselines": {"chance": chance}, "num_test": result["num_images"],
                "test": source.ann_files, "ranking": result["ranking"], "detail": result}
