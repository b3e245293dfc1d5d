"""The shared backbone zoo: named presets and one factory per part.

The presets are plain data; the model parts (and with them torch and timm) load on first use, so
that validating a config or asking the CLI for help needs neither."""

from importlib import import_module

from vlpbench.zoo.presets import TEXT_PRESETS, VISION_PRESETS

_PARTS = {"BertTextModel": "text", "create_text_model": "text", "hf_bert_to_vlpbench": "text",
          "TextTokenizer": "tokenizer", "train_wordpiece": "tokenizer",
          "VisionEncoder": "vision", "VisionOutput": "vision", "create_vision_encoder": "vision"}

__all__ = ["TEXT_PRESETS", "VISION_PRESETS", *_PARTS]


def __getattr__(name: str):
    if name in _PARTS:
        return getattr(import_module(f"vlpbench.zoo.{_PARTS[name]}"), name)
    raise AttributeError(f"module 'vlpbench.zoo' has no attribute {name!r}")
