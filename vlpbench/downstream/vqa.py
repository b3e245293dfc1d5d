"""Visual question answering, two ways (``downstream.vqa.head``):

- ``generation`` (ALBEF Sec. 5): an answer decoder started from the fusion blocks, word embeddings
  and MLM head (``vlpbench.zoo.answer_decoder``), trained with the conditional language-modelling
  loss (each of a question's answers weighted by its score) and ranked over the candidate list at
  test time: the first-token filter keeps ``k_test`` candidates, full-sequence log-likelihood
  picks among them (ALBEF adds the first token's log-probability twice; it is counted once here).
- ``classification`` (LightVLP Sec. 4): an MLP on the fused [CLS] state over the answer list,
  binary cross-entropy against the answers' scores.

Records (ALBEF's released files): ``{question_id, image, question, answer: str | [str, ..],
dataset}``. ``dataset: vg`` marks Visual Genome QA (ALBEF's ``vg_qa.json``): its image is read from
``vg_image_root`` and its one answer weighs ``vg_answer_weight`` (ALBEF's code: 0.5) in training.
Score of a prediction: with one answer, 1 if it matches; with several (one per annotator), VQA's
soft score min(#annotators who gave it / 3, 1). Answers are compared lower-cased and stripped.
Test records without answers (ALBEF's ``vqa_test.json``, scored by the VQA server) are answered,
and the answers written as the server takes them (``vqa_result.json``: ``[{question_id, answer}]``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from typing import Literal

from pydantic import Field

from vlpbench.config import ConfigError, TaskConfig
from vlpbench.data.datasets import RecordError, check_image, text_field
from vlpbench.downstream.common import (ClassifierHead, DownstreamTask, KeyedDataset, TaskBatch, TaskModel,
                                        frame_prior, fuse_batch)
from vlpbench.method import Progress, VLPMethod
from vlpbench.registry import register_task
from vlpbench.zoo.answer_decoder import AnswerDecoder, rank_candidates


@dataclass
class VQARecord:
    image: Path
    question: str
    answers: list[str]  # empty: a test record without answers (the VQA server scores it)
    question_id: int | str | None = None
    visual_genome: bool = False  # ``dataset: vg``: one answer, weighted vg_answer_weight


def normalise(answer: str) -> str:
    return answer.strip().lower()


def answer_scores(answers: list[str]) -> dict[str, float]:
    """Each distinct answer's score: 1 for a single answer, else min(count / 3, 1) (VQA's soft score)."""
    if len(answers) == 1:
        return {answers[0]: 1.0}
    return {answer: min(count / 3.0, 1.0) for answer, count in Counter(answers).items()}


def vqa_parser(vg_root: str | None, answers_required: bool):
    """``parse_vqa`` for one split: a ``dataset: vg`` record's image under ``vg_root``; a test split
    takes records without answers."""
    def parse(record, root: Path, source: str, verify: bool) -> VQARecord:
        return parse_vqa(record, root, verify, vg_root, answers_required)
    return parse


def parse_vqa(record, root: Path, verify: bool, vg_root: str | None = None,
              answers_required: bool = True) -> VQARecord:
    question = text_field(record, "question", "'image', 'question' and 'answer'")
    visual_genome = record.get("dataset") == "vg"
    if visual_genome and vg_root is None:
        raise RecordError("a 'dataset': 'vg' record's image is under downstream.vqa.vg_image_root, which is unset")
    answers = record.get("answer", [] if not answers_required else None)
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or (answers_required and not answers) or not all(
            isinstance(a, str) and a.strip() for a in answers):
        raise RecordError("'answer' must be a non-empty string or list of them", f"got {record.get('answer')!r}")
    image = check_image(record.get("image"), Path(vg_root) if visual_genome else root, verify)
    return VQARecord(image, question, [normalise(a) for a in answers], record.get("question_id"), visual_genome)


class VQAClassifier(TaskModel):
    def __init__(self, method: VLPMethod, num_answers: int):
        super().__init__(method)
        self.head = ClassifierHead(method.fused_width, num_answers)

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        return self.head(fuse_batch(self.method, batch.images, batch.input_ids, batch.attention_mask).cls)

    def forward(self, batch: TaskBatch, progress: Progress) -> dict[str, torch.Tensor]:
        targets = batch.labels
        loss = F.binary_cross_entropy_with_logits(self.logits(batch).float(), targets) * targets.shape[1]
        return {"loss": loss}


class VQAGenerator(TaskModel):
    def __init__(self, method: VLPMethod):
        super().__init__(method)
        language, blocks = method.language_model(), method.fusion_blocks()
        self.decoder = AnswerDecoder(language.preset, len(blocks), context_width=language.width)
        self.decoder_init = self.decoder.init_from(language.embeddings, language.mlm_head, blocks)

    def question_states(self, batch: TaskBatch) -> torch.Tensor:
        return fuse_batch(self.method, batch.images, batch.input_ids, batch.attention_mask).text

    def forward(self, batch: TaskBatch, progress: Progress) -> dict[str, torch.Tensor]:
        """Conditional LM loss of every answer of every question, weighted by the answer's score."""
        x = batch.extra
        context = self.question_states(batch)[x["answer_question"]]
        log_likelihood = self.decoder.token_log_likelihoods(x["answer_ids"], x["answer_mask"], context,
                                                            batch.attention_mask[x["answer_question"]]).sum(1)
        return {"loss": -(x["answer_weight"] * log_likelihood).sum() / len(batch)}

    @torch.no_grad()
    def predict(self, batch: TaskBatch, candidate_ids: torch.Tensor, candidate_mask: torch.Tensor, k: int,
                start_id: int) -> torch.Tensor:
        """Index of each question's best candidate answer (first-token filter, then full sequence)."""
        context, context_mask = self.question_states(batch), batch.attention_mask
        first = self.decoder.first_token_log_probs(start_id, context, context_mask)[:, candidate_ids[:, 1]]

        def sequence_scores(questions: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            return self.decoder.token_log_likelihoods(candidate_ids[candidates], candidate_mask[candidates],
                                                      context[questions], context_mask[questions]).sum(1)
        return rank_candidates(first, k, sequence_scores)


class VQATaskConfig(TaskConfig):
    head: Literal["generation", "classification"] = "generation"  # ALBEF / LightVLP
    answer_list: str | None = None  # JSON list of candidate answers (ALBEF: 3,128); None: the training answers
    vg_image_root: str | None = None  # where the images of ``dataset: vg`` records are (ALBEF's vg_root)
    vg_answer_weight: float = Field(0.5, gt=0.0)  # a VG answer's training weight (ALBEF's vqa_dataset: 0.5)
    k_test: int = Field(128, ge=1)  # candidates the first-token filter keeps for full-sequence scoring


@register_task
class VQATask(DownstreamTask):
    name = "vqa"
    config_class = VQATaskConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_records = self.open_records("train", vqa_parser(self.task_cfg.vg_image_root, True))
        self.answers = self.answer_list()
        self.answer_index = {a: i for i, a in enumerate(self.answers)}

    def answer_list(self) -> list[str]:
        """The candidate answers: ``answer_list`` (a JSON list) or every answer of the training split."""
        path = self.task_cfg.answer_list
        if path is None:
            return sorted({a for r in self.train_records for a in r.answers})
        try:
            answers = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"downstream.vqa.answer_list: {path}: cannot read a JSON list ({exc})") from None
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ConfigError(f"downstream.vqa.answer_list: {path}: expected a non-empty JSON list of answer strings")
        return list(dict.fromkeys(normalise(a) for a in answers))

    def training_scores(self, record: VQARecord) -> dict[str, float]:
        if record.visual_genome:
            return {answer: self.task_cfg.vg_answer_weight for answer in record.answers}
        return answer_scores(record.answers)

    def train_dataset(self) -> KeyedDataset:
        return KeyedDataset(self.train_records, lambda r, generator: (self.image(r.image, generator), r.question,
                                                                      self.training_scores(r)))

    def collate(self, items: list) -> TaskBatch:
        """Items ``(image, question, {answer: score})``."""
        images, questions, answers = zip(*items)
        input_ids, attention_mask = self.tokenize(list(questions))
        batch = TaskBatch(torch.stack(images), input_ids, attention_mask)
        if self.task_cfg.head == "classification":
            batch.labels = torch.zeros(len(items), len(self.answers))
            for row, record_answers in enumerate(answers):
                for answer, score in record_answers.items():
                    if answer in self.answer_index:
                        batch.labels[row, self.answer_index[answer]] = score
            return batch
        flat = [(row, answer, score) for row, record_answers in enumerate(answers)
                for answer, score in record_answers.items()]
        if not flat:  # test questions: nothing to score against
            return batch
        answer_ids, answer_mask = self.tokenize([answer for _, answer, _ in flat])
        batch.extra = {"answer_ids": answer_ids, "answer_mask": answer_mask,
                       "answer_weight": torch.tensor([score for _, _, score in flat]),
                       "answer_question": torch.tensor([row for row, _, _ in flat])}
        return batch

    def build_model(self, method: VLPMethod) -> TaskModel:
        if self.task_cfg.head == "classification":
            return VQAClassifier(method, len(self.answers))
        return VQAGenerator(method)

    @torch.no_grad()
    def predictions(self, model: TaskModel, records: list[VQARecord], device: torch.device) -> list[str]:
        candidate_ids, candidate_mask = (t.to(device) for t in self.tokenize(self.answers))
        predicted = []
        for chunk in self.eval_batches(records):
            batch = self.collate([(self.image(r.image), r.question, {}) for r in chunk]).to(device)
            if isinstance(model, VQAClassifier):
                best = model.logits(batch).argmax(dim=1)
            else:
                best = model.predict(batch, candidate_ids, candidate_mask, self.task_cfg.k_test, self.tokenizer.cls_id)
            predicted += [self.answers[i] for i in best.tolist()]
        return predicted

    def evaluate(self, model: TaskModel, device: torch.device) -> dict:
        """Accuracy on the test records that have answers; every record's answer, for the VQA server."""
        records = self.open_records("test", vqa_parser(self.task_cfg.vg_image_root, False))
        predicted = self.predictions(model, records, device)
        answered = [(r, p) for r, p in zip(records, predicted) if r.answers]
        result = {"metrics": {}, "baselines": {}, "num_test": len(records), "num_test_scored": len(answered),
                  "answers": len(self.answers), "head": self.task_cfg.head,
                  "server_result": [{"question_id": r.question_id, "answer": p} for r, p in zip(records, predicted)]}
        if answered:
            scored, scored_predictions = (list(t) for t in zip(*answered))
            scores = [answer_scores(r.answers) for r in scored]
            result.update(metrics={"accuracy": _mean_score(scored_predictions, scores)},
                          baselines=self.baselines(scored, scores),
                          test_answers_outside_list=sum(not any(a in self.answer_index for a in s) for s in scores))
        if isinstance(model, VQAGenerator):
            result["decoder_initialised_tensors"] = list(model.decoder_init)
        return result

    def baselines(self, records: list[VQARecord], scores: list[dict[str, float]]) -> dict:
        """Chance (a uniform pick from the answer list), the most frequent training answer, and the
        most frequent training answer of the question's sentence frame: the language prior."""
        majority = Counter(a for r in self.train_records for a in r.answers).most_common(1)[0][0]
        prior = frame_prior([(r.question, a) for r in self.train_records for a in r.answers],
                            [r.question for r in records])
        chance = 100.0 * sum(sum(s.get(a, 0.0) for a in self.answers) / len(self.answers) for s in scores) / len(scores)
        return {"chance": {"accuracy": chance},
                "majority_answer": {"accuracy": _mean_score([majority] * len(records), scores)},
                "sentence_frame_prior": {"accuracy": _mean_score(prior, scores)}}


def _mean_score(predicted: list[str], scores: list[dict[str, float]]) -> float:
    return 100.0 * sum(s.get(p, 0.0) for p, s in zip(predicted, scores)) / len(scores)
