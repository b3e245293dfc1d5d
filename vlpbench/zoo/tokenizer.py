"""Offline tokenizers: a WordPiece vocabulary trained on the training captions, or any local
Hugging Face tokenizer directory / hub name. Serialises to one JSON string so a checkpoint
carries the exact tokenizer it was trained with."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vlpbench.io import write_text
from vlpbench.zoo.weights import packaged_path

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def train_wordpiece(texts: Iterable[str], vocab_size: int, pad: bool = False) -> "TextTokenizer":
    """A lower-cased BERT-style WordPiece tokenizer whose vocabulary is built from ``texts``.

    The vocabulary is the special tokens, every character seen (alone and as a ``##`` suffix
    piece, so no word is ever unknown), then whole words by descending frequency (ties broken
    alphabetically) up to ``vocab_size``; with ``pad``, ``[unusedN]`` entries (as in BERT's vocabulary)
    fill it to exactly ``vocab_size``. Built by hand rather than with the tokenizers trainer,
    whose choice among equally frequent merges varies from run to run: the same captions must
    always give the same ids.
    """
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = sorted({ch for word in counts for ch in word})
    pieces = list(SPECIAL_TOKENS.values()) + alphabet + [f"##{ch}" for ch in alphabet]
    if vocab_size < len(pieces):
        raise ValueError(f"model.text.vocab_size {vocab_size} is below the {len(pieces)} special and character "
                         "tokens the captions need")
    known = set(pieces)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in known]
    vocab = pieces + words[:vocab_size - len(pieces)]
    if pad:
        vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS))


def sized_wordpiece(vocab_size: int) -> "TextTokenizer":
    """A WordPiece tokenizer of exactly ``vocab_size`` entries with made-up words (``w0``, ``w1``,
    ...): the word-embedding and MLM-head shapes of a real vocabulary (BERT's 30,522) where only
    shapes matter (FLOP counts, speed benchmarks) and no vocabulary file is at hand."""
    return train_wordpiece([" ".join(f"w{i}" for i in range(vocab_size))], vocab_size, pad=True)


class TextTokenizer:
    """Batch tokenisation to padded id and mask tensors, plus the special ids MLM needs."""

    def __init__(self, hf: PreTrainedTokenizerFast):
        missing = [name for name in ("pad_token_id", "cls_token_id", "mask_token_id") if getattr(hf, name) is None]
        if missing:
            raise ValueError(f"tokenizer lacks {missing}; vlpbench needs BERT-style [PAD], [CLS] and [MASK] tokens")
        self.hf = hf
        self.pad_id, self.cls_id, self.mask_id = hf.pad_token_id, hf.cls_token_id, hf.mask_token_id
        self.vocab_size = len(hf)

    @classmethod
    def load(cls, source: str | Path) -> "TextTokenizer":
        """A file saved by ``save`` or a Hugging Face ``tokenizer.json``, a tokenizer directory, the
        name of a packaged model (``vlpbench.zoo.weights.PACKAGED``), or a hub name."""
        source = packaged_path(str(source)) or source
        path = Path(source)
        if path.is_file():
            text = path.read_text()
            if text.startswith('{"special_tokens"'):  # written by ``save``
                return cls.from_json(text)
            return cls(PreTrainedTokenizerFast(tokenizer_file=str(path), **SPECIAL_TOKENS))
        try:
            return cls(AutoTokenizer.from_pretrained(str(source), use_fast=True))
        except OSError as exc:
            raise OSError(f"tokenizer {str(source)!r} is neither a tokenizer.json file, a local tokenizer directory, "
                          f"nor reachable on the hub: {exc}") from exc

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token ([PAD], [CLS], [SEP], [MASK], [UNK], ...), never a word."""
        return sorted({self.pad_id, self.cls_id, self.mask_id, *self.hf.all_special_ids})

    def fingerprint(self) -> str:
        """A hash of the vocabulary and special tokens: equal for tokenizers that give equal ids
        (``to_json`` also records padding and truncation settings, which change with use)."""
        specials = {k: getattr(self.hf, k) for k in SPECIAL_TOKENS}
        payload = json.dumps({"vocab": self.hf.get_vocab(), "special": specials}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def save(self, path: Path) -> None:
        write_text(Path(path), self.to_json())

    def to_json(self) -> str:
        specials = {k: getattr(self.hf, k) for k in SPECIAL_TOKENS}
        return json.dumps({"special_tokens": specials, "tokenizer": self.hf.backend_tokenizer.to_str()})

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        data = json.loads(text)
        return cls(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(data["tokenizer"]), **data["special_tokens"]))

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.hf(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt",
                      return_token_type_ids=False)
        return out["input_ids"], out["attention_mask"]
