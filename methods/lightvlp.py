"""LightVLP: gated interactive masked autoencoders (Sec. 3, Eq. 1-10).

Masked image patches and text tokens are removed before the uni-modal encoders run (Sec. 3.1);
ITC contrasts the uni-modal [CLS] states against momentum encoders and queues (Eq. 3, 9); ``l_c``
cross Transformers in each direction (Eq. 4) feed a matching gate p (Eq. 5) that mixes uni-modal
and cross representations (Eq. 6); lightweight decoders restore the removed positions with a
mask embedding and reconstruct pixels (MIR, Eq. 7) and token ids (MTR, Eq. 8); ITM is the
cross-entropy of the gate on the pair and two hard negatives (Eq. 10). Loss = MIR+MTR+ITC+ITM.

Choices the paper leaves open (each a config key where it matters):
- The momentum encoders see the same kept tokens as the online ones (the paper does not say; this
  keeps the token removal's saving). Temperature ``temp`` (kappa) is fixed, not learned.
- The uni-modal text encoder is the zoo's text model run text-only (all its layers, no
  cross-attention), so the uni-modal warm start of every method loads into it unchanged.
- Cross Transformers are post-LN as Eq. 4; the image and text cross stacks update in parallel
  (layer l+1 of each reads layer l of the other).
- Gate: p is computed from the image-side cross [CLS] (Eq. 5), per pair, and shared by both
  modalities' outputs. ``gate: false`` (Table 6) forces p = 1 for the decoders' input; ITM still
  trains the matching head. The decoders' gradient reaches the gate through Eq. 6.
- MTR masks any real token except [CLS] ([SEP] included, as ALBEF's MLM); each caption removes
  ``n - int(n * (1 - text_mask_ratio))`` of its ``n`` tokens. MIR's target is the normalised
  input pixels, optionally per-patch normalised (``norm_pix``, MAE's variant; off as in Eq. 7).
- ITM without ITC (Table 7 "w/o ITC") samples its negatives uniformly in the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlpbench.config import Capabilities, MomentumContrastConfig, divisibility_problem
from vlpbench.losses import false_negative_count, itm_pairs, masked_patch_mse, patchify, sample_itm_negatives
from vlpbench.masking import PatchMask, TokenMask, random_patch_masking, random_token_masking
from vlpbench.method import Batch, FusedPair, MomentumContrast, Progress, VLPMethod
from vlpbench.registry import register_method
from vlpbench.streams import init_part
from vlpbench.zoo import create_text_model, create_vision_encoder
from vlpbench.zoo.decoder import MaskedDecoder
from vlpbench.zoo.layers import TransformerBlock, mean_head_scores, padding_mask_to_attn_mask
from vlpbench.zoo.vision import VisionOutput


class LightVLPConfig(MomentumContrastConfig):
    """Defaults are LightVLP_base (Sec. 4.1); ``experiments/presets/lightvlp_*.yaml`` hold the presets."""
    name: Literal["lightvlp"] = "lightvlp"
    tiny = {"embed_dim": 32, "queue_size": 16, "cross_layers": 2, "decoder_layers": 1, "decoder_width": 32,
            "decoder_heads": 2}
    image_mask_ratio: float = Field(0.5, ge=0.0, lt=1.0)  # Table 5 sweeps 0.25 / 0.5 / 0.75
    text_mask_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    temp: float = Field(0.05, gt=0.0)        # kappa, fixed
    cross_layers: int = Field(4, ge=1)       # l_c
    decoder_layers: int = Field(4, ge=1)     # l_d
    decoder_width: int = Field(256, ge=8)    # H_d
    decoder_heads: int = Field(8, ge=1)
    norm_pix: bool = False
    gate: bool = True                        # Table 6: false forces p = 1
    mir: bool = True                         # Table 7 ablations
    mtr: bool = True
    itc: bool = True
    itm: bool = True

    declared = Capabilities(saliency=True, gate=True)

    def capabilities(self) -> Capabilities:
        # (with itm: false the gate's head still scores pairs, untrained, as the ablation row asks)
        return dataclasses.replace(self.declared, contrastive_embedding=self.itc)

    def itm_positive_fraction(self) -> float | None:
        return 1 / 3 if self.itm else None

    def cross_attention_layers(self, experiment) -> int:
        return self.cross_layers

    def check(self, experiment, at: str = "method") -> list[str]:
        problems = super().check(experiment, at)
        problems += divisibility_problem(f"{at}.decoder_width", self.decoder_width, f"{at}.decoder_heads",
                                         self.decoder_heads)
        if not (self.mir or self.mtr or self.itc or self.itm):
            problems.append(f"{at}: every objective (mir, mtr, itc, itm) is off")
        return problems


@register_method
class LightVLP(MomentumContrast, VLPMethod):
    name = "lightvlp"
    config_class = LightVLPConfig

    def __init__(self, config: LightVLPConfig, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self.visual_encoder = init_part("visual_encoder", create_vision_encoder, model.vision.preset,
                                        model.vision.pretrained, model.vision.image_size)
        self.text = init_part("text", create_text_model, model.text.preset, None, model.text.pretrained,
                              vocab_size=tokenizer.vocab_size, **model.text.preset_overrides())
        # MTR predicts through the text decoder; BERT's MLM head stays (frozen) so that the uni-modal
        # warm start and BERT checkpoints load into the text model unchanged
        self.text.mlm_head.requires_grad_(False)
        vision_width, text_width, preset = self.visual_encoder.width, self.text.width, self.text.preset
        self.vision_proj = init_part("vision_proj", nn.Linear, vision_width, config.embed_dim)
        self.text_proj = init_part("text_proj", nn.Linear, text_width, config.embed_dim)
        self.image_cross = init_part("image_cross", self._cross_blocks, vision_width, text_width, config.cross_layers)
        self.text_cross = init_part("text_cross", self._cross_blocks, text_width, vision_width, config.cross_layers)
        self.gate_head = init_part("gate_head", nn.Linear, vision_width, 1)
        patch = self.visual_encoder.vit.patch_embed.patch_size[0]
        decoder = (config.decoder_width, config.decoder_layers, config.decoder_heads)
        self.image_decoder = init_part("image_decoder", MaskedDecoder, vision_width, *decoder,
                                       self.visual_encoder.num_patches, patch * patch * 3, prefix_tokens=1)
        self.text_decoder = init_part("text_decoder", MaskedDecoder, text_width, *decoder, preset.max_positions,
                                      tokenizer.vocab_size)
        if config.itc:
            self.build_momentum_contrast()

    def _cross_blocks(self, width: int, other_width: int, layers: int) -> nn.ModuleList:
        p = self.text.preset
        return nn.ModuleList(TransformerBlock(width, p.num_heads, 4 * width, p.dropout, cross_width=other_width,
                                              eps=p.layer_norm_eps, self_attention=False) for _ in range(layers))

    # ---- evaluation interface ----
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.encode_text_only(input_ids, attention_mask)

    def match_score(self, text_states, attention_mask, image_states) -> torch.Tensor:
        """The gate logit alone. The cross blocks have no self-attention, so in the last layer each
        image token depends on itself and the text only: that layer runs for [CLS] alone, its text
        side not at all. The score is unchanged; at lightvlp_mini (2 layers, 65 image and 17 text tokens)
        it takes a quarter of the time of ``interact``."""
        to_text = padding_mask_to_attn_mask(attention_mask)
        image, text = self.cross_layers(image_states, text_states, to_text, len(self.image_cross) - 1)
        image_cls = self.image_cross[-1](image[:, :1], context=text, context_mask=to_text)[:, 0]
        return self.gate_head(image_cls).squeeze(-1)

    def match_logits(self, text_states, attention_mask, image_states) -> torch.Tensor:
        """(0, gate logit): their softmax is the gate p, so cross-entropy on them is Eq. 10's."""
        gate_logit = self.match_score(text_states, attention_mask, image_states)
        return torch.stack([torch.zeros_like(gate_logit), gate_logit], dim=-1)

    def fuse(self, text_states, attention_mask, image_states) -> FusedPair:
        """The cross states S of both directions (Eq. 4); the pooled pair is both sides' [CLS]."""
        cross_image, cross_text, _ = self.interact(image_states, text_states, attention_mask)
        return FusedPair(cross_text, torch.cat([cross_image[:, 0], cross_text[:, 0]], dim=-1))

    @property
    def fused_width(self) -> int:
        return self.visual_encoder.width + self.text.width

    def fusion_blocks(self) -> nn.ModuleList:
        return self.text_cross

    def itc_temperature(self) -> torch.Tensor:
        return torch.tensor(self.config.temp)  # kappa, fixed

    def token_saliency(self, input_ids, attention_mask, images) -> torch.Tensor:
        """EPIC Eq. 8: the image [CLS] query over the text keys in the penultimate image-side cross layer."""
        text, image = self.encode_text(input_ids, attention_mask), self.encode_image(images).states
        index, to_text = (len(self.image_cross) - 2) % len(self.image_cross), padding_mask_to_attn_mask(attention_mask)
        image, text = self.cross_layers(image, text, to_text, index)
        return mean_head_scores(self.image_cross[index].cross_attn, image[:, 0], text, attention_mask)

    def match_probability(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores)  # the gate p of Eq. 5

    # ---- the steps of Fig. 2 ----
    def mask_inputs(self, batch: Batch) -> tuple[PatchMask, TokenMask]:
        """Sec. 3.1: which patches and tokens are removed (independent ratios)."""
        patches = random_patch_masking(len(batch), self.visual_encoder.num_patches, self.config.image_mask_ratio,
                                       batch.images.device)
        return patches, random_token_masking(batch.attention_mask, self.config.text_mask_ratio)

    def encode_kept_text(self, text, input_ids: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
        """Uni-modal text encoding of the kept tokens only, at their original positions."""
        kept_ids = torch.gather(input_ids, 1, tokens.keep_idx)
        return text.encode_text_only(kept_ids, tokens.kept_valid.long(), position_ids=tokens.keep_idx)

    def cross_layers(self, image: torch.Tensor, text: torch.Tensor, to_text: torch.Tensor, layers: int):
        """Eq. 4: the first ``layers`` layers of both cross stacks, each side attending to the other."""
        for image_layer, text_layer in zip(self.image_cross[:layers], self.text_cross[:layers]):
            image, text = image_layer(image, context=text, context_mask=to_text), text_layer(text, context=image)
        return image, text

    def interact(self, image_states: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor):
        """Eq. 4-5: the cross stacks of both directions and the gate logit of each pair."""
        cross_image, cross_text = self.cross_layers(image_states, text_states, padding_mask_to_attn_mask(text_mask),
                                                    len(self.image_cross))
        return cross_image, cross_text, self.gate_head(cross_image[:, 0]).squeeze(-1)

    def gated_output(self, uni: torch.Tensor, cross: torch.Tensor, gate_logit: torch.Tensor) -> torch.Tensor:
        """Eq. 6: O = (1 - p) H + p S; with ``gate: false``, O = S."""
        if not self.config.gate:
            return cross
        p = torch.sigmoid(gate_logit)[:, None, None].to(cross.dtype)
        return (1 - p) * uni + p * cross

    # ---- pre-training ----
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        cfg = self.config
        patches, tokens = self.mask_inputs(batch)
        image = self.visual_encoder(batch.images, patches.keep_idx)
        text_states = self.encode_kept_text(self.text, batch.input_ids, tokens)
        text_mask = tokens.kept_valid.long()

        losses, sim_i2t, sim_t2i = {}, None, None
        matches = self.batch_matches(batch)
        if cfg.itc:
            losses["loss_itc"], sim_i2t, sim_t2i = self.itc_loss(image, text_states, batch, patches, tokens, matches)
        hard = cfg.hard_negative_share(progress.step) if cfg.itc else 0.0
        cross_image, cross_text, gate_logit = self.interact_with_negatives(image.states, text_states, text_mask,
                                                                           sim_i2t, sim_t2i, hard, losses, matches)
        if cfg.mir:
            out = self.gated_output(image.states, cross_image, gate_logit)
            pred = self.image_decoder(out, patches.restore_idx)
            target = patchify(batch.images, self.visual_encoder.vit.patch_embed.patch_size[0])
            losses["loss_mir"] = masked_patch_mse(pred, target, patches.mask, cfg.norm_pix)
        if cfg.mtr:
            out = self.gated_output(text_states, cross_text, gate_logit)
            logits = self.text_decoder(out, tokens.restore_idx, tokens.kept_valid, padding_mask=batch.attention_mask,
                                       positions=tokens.mask)
            losses["loss_mtr"] = F.cross_entropy(logits.float(), batch.input_ids[tokens.mask]) if tokens.mask.any() \
                else logits.sum() * 0.0
        losses["loss"] = sum(losses.values())
        losses["gate_p"] = torch.sigmoid(gate_logit.detach()).mean()
        if matches is not None:
            losses["false_negative_pairs"] = false_negative_count(matches)
        return losses

    def itc_loss(self, image: VisionOutput, text_states: torch.Tensor, batch: Batch, patches: PatchMask,
                 tokens: TokenMask, matches: torch.Tensor | None = None):
        """Eq. 3 and 9 over the uni-modal [CLS] states of the kept tokens."""
        with torch.no_grad():
            image_m = self.teacher["visual_encoder"](batch.images, patches.keep_idx)
            text_m = self.encode_kept_text(self.teacher["text"], batch.input_ids, tokens)
        return self.momentum_itc_loss(image, text_states, image_m, text_m, self.config.temp, matches=matches)

    def interact_with_negatives(self, image_states, text_states, text_mask, sim_i2t, sim_t2i, hard: float,
                                losses: dict, matches=None):
        """The cross stacks over the B pairs, plus (with ITM) a negative image per text and a negative
        text per image in the same pass (a share ``hard`` of them hard); Eq. 10 on the gate. Returns
        the positives' part."""
        bs, labels = len(image_states), None
        if self.config.itm:
            negatives = sample_itm_negatives(sim_i2t, sim_t2i, bs, hard, image_states.device, matches)
            text_states, text_mask, image_states, labels = itm_pairs(text_states, text_mask, image_states, *negatives)
        cross_image, cross_text, gate_logit = self.interact(image_states, text_states, text_mask)
        if labels is not None:
            losses["loss_itm"] = F.binary_cross_entropy_with_logits(gate_logit.float(), labels.float())
        return cross_image[:bs], cross_text[:bs], gate_logit[:bs]

    def after_optimizer_step(self) -> None:
        if self.config.itc:
            self.update_momentum_teacher()
