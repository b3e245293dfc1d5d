"""The shared backbone zoo: named presets and one factory per part."""

from vlpbench.zoo.text import TEXT_PRESETS, BertTextModel, create_text_model, hf_bert_to_vlpbench
from vlpbench.zoo.tokenizer import TextTokenizer, train_wordpiece
from vlpbench.zoo.vision import VISION_PRESETS, VisionEncoder, VisionOutput, create_vision_encoder

__all__ = ["TEXT_PRESETS", "VISION_PRESETS", "BertTextModel", "TextTokenizer", "VisionEncoder", "VisionOutput",
           "create_text_model", "create_vision_encoder", "hf_bert_to_vlpbench", "train_wordpiece"]
