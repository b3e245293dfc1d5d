"""FLOPs of one pre-training step per sample, by component and pass, under a stated convention.

Three counters see the same step (the method's own ``forward`` on a batch of the configured shapes,
then ``loss.backward()``):

- the project's counter (``StepFlopCounter``): a torch dispatch mode that prices every matmul,
  convolution and attention kernel with ``torch.utils.flop_counter``'s formulas (plus the CPU
  flash-attention kernels, which torch leaves unpriced), attributes each to the component module
  and the call of it that ran it (the fusion encoder's first, second, ... pass), and tells layers
  (a matmul or convolution with a weight parameter, tied vocabulary heads included) from
  functional matmuls (contrastive similarities, attention on the math path) and fused attention.
  It counts the backward pass as autograd runs it: frozen teachers have none.
- fvcore (forward, via a jit trace) with handlers for the ops it leaves at 0:
  ``aten::scaled_dot_product_attention`` and ``aten::_native_multi_head_attention``.
- ptflops' aten backend (forward; matmuls and convolutions, blind to fused attention), which,
  unlike its default backend, neither misses ``@`` nor drops timm ``Attention``'s linears.

Only matmul-type work is counted (normalisations and element-wise ops are below 0.5% of a
transformer's and are what MFU conventions leave out too).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

from vlpbench.config import ExperimentConfig
from vlpbench.method import Batch, Progress, VLPMethod
from vlpbench.data.datasets import SkipReport, captions_of
from vlpbench.pipeline import build_method, data_sources, image_size_of, make_tokenizer, open_entries
from vlpbench.zoo.text import BertTextModel, MLMHead
from vlpbench.zoo.tokenizer import TextTokenizer, sized_wordpiece

aten = torch.ops.aten


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    """Model FLOPs: the gradients' four matmuls (2x forward), as attention written as matmuls
    costs; the kernel's recomputation of QK^T is hardware work that MFU does not count."""
    return 2 * sdpa_flop_count(query.shape, key.shape, value.shape)


ATTENTION_OPS = {op for op in flop_registry if "attention" in str(op)}  # fused kernels, CPU ones included
BIASED_OPS = {aten.addmm: 0, aten.convolution: 2}  # op -> position of its bias argument


@dataclass(frozen=True)
class Convention:
    """What a FLOP figure counts. ``multiply_adds``: one per multiply-add (fvcore's, thop's and
    ptflops' "MACs"), else two (FLOPs). ``backward``: the backward pass too. ``attention``: the
    attention matmuls (QK^T and AV); without them only what linear and convolution layers compute,
    as thop counts (and the papers' tables, see docs)."""
    multiply_adds: bool = False
    backward: bool = True
    attention: bool = True

    WORDS = {"macs": ("multiply_adds", True), "flops": ("multiply_adds", False),
             "forward": ("backward", False), "forward+backward": ("backward", True),
             "attention": ("attention", True), "linear_only": ("attention", False)}

    @classmethod
    def parse(cls, text: str) -> "Convention":
        """Comma-separated words: macs|flops, forward|forward+backward, attention|linear_only."""
        settings = {}
        for word in filter(None, (w.strip() for w in text.split(","))):
            if word not in cls.WORDS:
                raise ValueError(f"--convention: unknown word {word!r}; expected some of {sorted(cls.WORDS)}")
            key, value = cls.WORDS[word]
            settings[key] = value
        convention = cls(**settings)
        if convention.backward and not convention.attention:
            raise ValueError("--convention: linear_only is a forward-pass convention (the backward of a linear "
                             "layer and of a functional matmul look alike to autograd); add 'forward'")
        return convention

    def describe(self) -> str:
        unit = "multiply-adds" if self.multiply_adds else "FLOPs (2 per multiply-add)"
        passes = "forward + backward (as autograd runs it)" if self.backward else "forward only"
        counted = ("linear, convolution, functional matmul and attention matmuls" if self.attention
                   else "linear and convolution layers only (no attention or functional matmuls)")
        return f"{unit}; {passes}; {counted}; per sample"

    def words(self) -> str:
        return ",".join(["macs" if self.multiply_adds else "flops", "forward+backward" if self.backward else "forward",
                         "attention" if self.attention else "linear_only"])


def component_modules(method: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """The rows of a breakdown: the method's children, with containers (teacher ``ModuleDict`` s,
    the text+fusion BERT, a plug-in's base method) opened so text layers, fusion layers and the
    vocabulary head are separate rows."""
    rows = {}
    for name, child in method.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, (nn.ModuleDict, BertTextModel, VLPMethod)):
            rows |= component_modules(child, f"{path}.")
        else:
            rows[path] = child
    return rows


class StepFlopCounter(TorchDispatchMode):
    """Counts FLOPs (2 per multiply-add) by (phase, component, call, kind); kinds are ``linear``
    (with a weight parameter), ``attention`` (fused kernels) and ``matmul`` (functional)."""

    OUTSIDE = "(method body)"

    def __init__(self, method: nn.Module):
        super().__init__()
        # every module belongs to the row it sits in (a ModuleList row is never called itself)
        self.owner = {id(sub): name for name, m in component_modules(method).items() for sub in m.modules()}
        self.counts: dict[tuple[str, str, int, str], int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[nn.Module] = []
        self.last_row = self.OUTSIDE
        self.weight_storages = {p.untyped_storage().data_ptr() for p in method.parameters()}
        self.phase = "forward"
        self._handles = []

    def __enter__(self):
        self._handles = [nn.modules.module.register_module_forward_pre_hook(self._enter_module),
                         nn.modules.module.register_module_forward_hook(self._leave_module)]
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def _enter_module(self, module, args):
        row = self.owner.get(id(module))
        if row is not None and row != self.last_row:  # a pass through the row (all its layers) starts
            self.calls[row] += 1
            self.last_row = row
        self.stack.append(module)

    def _leave_module(self, module, args, output):
        self.stack.pop()

    def _row(self) -> str:
        return next((self.owner[id(m)] for m in self.stack if id(m) in self.owner), self.OUTSIDE)

    def _where(self) -> tuple[str, int]:
        row = self._row()
        return row, max(self.calls[row] - 1, 0)

    def _has_weight(self, args) -> bool:
        """A layer's matmul: one operand is (a view of) a parameter (``nn.Linear``, a tied decoder
        through ``F.linear``, a convolution); functional matmuls multiply activations or buffers."""
        return any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in self.weight_storages
                   for a in args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            kind = "attention" if packet in ATTENTION_OPS else "matmul"
            if self.phase == "backward":
                where = ("backward", "(backward)", 0)
            else:
                row, call = self._where()
                self.last_row = row
                where, kind = ("forward", row, call), "linear" if kind == "matmul" and self._has_weight(args) else kind
            self.counts[(*where, kind)] += flop_registry[packet](*args, **kwargs, out_val=out)
            if packet in BIASED_OPS and args[BIASED_OPS[packet]] is not None:  # what ptflops adds per output
                self.counts[(*where, "bias")] += 2 * out.numel()
        return out


def count_forward(module: nn.Module, *args, **kwargs) -> dict[str, int]:
    """FLOPs (2 per multiply-add) by kind of one ``module(*args, **kwargs)`` call."""
    counter = StepFlopCounter(module)
    with counter:
        module(*args, **kwargs)
    kinds: dict[str, int] = defaultdict(int)
    for (_, _, _, kind), flops in counter.counts.items():
        kinds[kind] += flops
    return dict(kinds)


def counted(counts: dict, convention: Convention) -> float:
    """FLOPs of ``counts`` entries that ``convention`` includes (in its unit)."""
    kinds = {"linear", "matmul", "attention"} if convention.attention else {"linear"}
    phases = ("forward", "backward") if convention.backward else ("forward",)
    total = sum(v for (phase, _, _, kind), v in counts.items() if phase in phases and kind in kinds)
    return total / 2 if convention.multiply_adds else total


class _Step(nn.Module):
    """The method's forward as a module of tensors (what fvcore and ptflops trace)."""

    def __init__(self, method: VLPMethod, progress: Progress):
        super().__init__()
        self.method, self.progress = method, progress

    def forward(self, images, input_ids, attention_mask, regions):
        return self.method(Batch(images, input_ids, attention_mask, regions), self.progress)["loss"]


def _sdpa_macs(inputs, outputs) -> int:
    """fvcore handle: QK^T and AV of ``aten::scaled_dot_product_attention`` (multiply-adds)."""
    query, key = (fvcore_shape(v) for v in inputs[:2])
    return 2 * math.prod(query[:-1]) * key[-2] * query[-1]


def _native_mha_macs(inputs, outputs) -> int:
    """fvcore handle: ``nn.MultiheadAttention``'s eval fast path (qkv and output projections plus
    attention), which fvcore otherwise reads as 0."""
    query, key = fvcore_shape(inputs[0]), fvcore_shape(inputs[1])
    embed = query[-1]
    batch_lq, batch_lk = math.prod(query[:-1]), math.prod(key[:-1])
    return batch_lq * embed * embed * 2 + batch_lk * embed * embed * 2 + 2 * batch_lq * key[-2] * embed


def fvcore_shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape  # fvcore imports slowly: only when it counts
    return get_shape(value)


FVCORE_MATMUL_OPS = {"linear": "linear", "conv": "linear", "matmul": "matmul", "bmm": "matmul", "einsum": "matmul",
                     "addmm": "matmul", "scaled_dot_product_attention": "attention",
                     "_native_multi_head_attention": "attention"}


def fvcore_forward(step: _Step, inputs: tuple) -> dict:
    """fvcore's forward multiply-adds: by kind, and by component row."""
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(step, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs,
                           "aten::_native_multi_head_attention", _native_mha_macs)
    for op in ("aten::layer_norm", "aten::batch_norm", "aten::group_norm", "aten::instance_norm",
               "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d",
               "aten::grid_sampler"):
        analysis.set_op_handle(op, None)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    by_kind = defaultdict(int)
    for op, macs in analysis.by_operator().items():
        by_kind[FVCORE_MATMUL_OPS.get(op, "other")] += macs
    modules = analysis.by_module()
    rows = {name: modules.get(f"method.{name}", 0) for name in component_modules(step.method)}
    rows[StepFlopCounter.OUTSIDE] = analysis.total() - sum(rows.values())
    return {"by_kind": dict(by_kind), "by_component": rows, "total": analysis.total()}


def ptflops_forward(step: _Step, inputs: tuple) -> int:
    """ptflops' aten-backend forward multiply-adds (matmuls and convolutions; fused attention unseen)."""
    from ptflops import get_model_complexity_info
    names = ("images", "input_ids", "attention_mask", "regions")
    macs, _ = get_model_complexity_info(step, (1,), input_constructor=lambda _: dict(zip(names, inputs)),
                                        as_strings=False, print_per_layer_stat=False, backend="aten", verbose=False)
    return int(macs)


def synthetic_batch(batch_size: int, image_size: int, text_length: int, vocab_size: int, num_special: int,
                    seed: int = 0) -> Batch:
    """Random images and full-length captions ([CLS], words, [SEP]; no padding) of the given shapes:
    FLOPs depend on shapes only."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    ids = torch.randint(num_special, vocab_size, (batch_size, text_length), generator=generator)
    return Batch(images, ids, torch.ones_like(ids), torch.ones(batch_size, image_size, image_size, dtype=torch.bool))


@dataclass
class StepFlops:
    batch_size: int
    counts: dict          # (phase, component, call, kind) -> FLOPs of the whole batch
    fvcore: dict | None   # multiply-adds of the whole batch
    ptflops: int | None

    def per_sample(self, convention: Convention) -> float:
        return counted(self.counts, convention) / self.batch_size

    def components(self, convention: Convention) -> list[dict]:
        """Forward rows (per sample): component, number of calls, each call's count, their total."""
        forward_only = Convention(convention.multiply_adds, False, convention.attention)
        by_row: dict[str, dict] = {}
        for (phase, row, call, kind), flops in sorted(self.counts.items()):
            if phase != "forward":
                continue
            entry = by_row.setdefault(row, {"component": row, "per_call": defaultdict(int)})
            single = {(phase, row, call, kind): flops}
            entry["per_call"][call] += counted(single, forward_only) / self.batch_size
        rows = []
        for row, entry in by_row.items():
            per_call = [entry["per_call"][c] for c in sorted(entry["per_call"])]
            rows.append({"component": row, "calls": len(per_call), "per_call": per_call, "total": sum(per_call)})
        return rows

    def linear_with_bias_macs(self) -> float:
        """Forward multiply-adds of layers plus one per bias addition: what ptflops counts."""
        flops = sum(v for (phase, _, _, kind), v in self.counts.items() if phase == "forward" and kind in ("linear", "bias"))
        return flops / 2 / self.batch_size

    def fvcore_per_sample(self, convention: Convention) -> float | None:
        """fvcore's count in ``convention``'s unit and kinds (None when not run or when the
        convention counts the backward pass, which fvcore does not see)."""
        if self.fvcore is None or convention.backward:
            return None
        kinds = ("linear", "matmul", "attention") if convention.attention else ("linear",)
        macs = sum(self.fvcore["by_kind"].get(k, 0) for k in kinds) / self.batch_size
        return macs if convention.multiply_adds else 2 * macs


def count_step(method: VLPMethod, batch: Batch, progress: Progress, cross_check: bool = True,
               seed: int = 0) -> StepFlops:
    """Count one training step of ``method`` on ``batch`` (forward and backward; the optimiser's
    and momentum update's element-wise work is not matmul work and is not counted). Every counter
    starts from the same RNG state, so they see the same random masks (MLM's masked count varies
    from draw to draw, and with it the vocabulary head's work)."""
    method.train()
    counter = StepFlopCounter(method)
    torch.manual_seed(seed)
    with counter:
        loss = method(batch, progress)["loss"]
        counter.phase = "backward"
        loss.backward()
    method.zero_grad(set_to_none=True)
    fv = pt = None
    if cross_check:
        step, inputs = _Step(method, progress), (batch.images, batch.input_ids, batch.attention_mask, batch.regions)
        with torch.no_grad():
            torch.manual_seed(seed)
            fv = fvcore_forward(step, inputs)
            torch.manual_seed(seed)
            pt = ptflops_forward(step, inputs)
    return StepFlops(len(batch), dict(counter.counts), fv, pt)


def experiment_path(target: str) -> str:
    """An experiment YAML path, or a preset name under ``experiments/presets``."""
    if Path(target).is_file():
        return target
    preset = Path("experiments/presets") / f"{target}.yaml"
    if preset.is_file():
        return str(preset)
    raise FileNotFoundError(f"{target!r} is neither an experiment YAML file nor a preset in experiments/presets")


def experiment_tokenizer(cfg: ExperimentConfig) -> TextTokenizer:
    """The tokenizer the experiment trains with, or one of its size: ``model.text.tokenizer``; with
    ``pad_vocab``, ``vocab_size`` entries (no data needed); else WordPiece on its captions."""
    text = cfg.model.text
    if text.tokenizer:
        return TextTokenizer.load(text.tokenizer)
    if text.pad_vocab:
        return sized_wordpiece(text.vocab_size)
    source = data_sources(cfg, log=lambda *_: None)["pretrain"]
    return make_tokenizer(cfg, captions_of(open_entries(source, cfg, SkipReport())))


# deep into a long run: every warm-up ramp (distillation weight, hard-negative share) is over
MID_RUN = Progress(step=10**6, steps_per_epoch=10**5)


def count_experiment(cfg: ExperimentConfig, batch_size: int, text_length: int | None = None,
                     cross_check: bool = True, vocab_heads_on_all_tokens: bool = False) -> StepFlops:
    """One step of the experiment's method at its image size and text length, random weights and
    the experiment's vocabulary size. ``vocab_heads_on_all_tokens``: forward counts of MLM heads as
    a reference BERT runs them."""
    tokenizer = experiment_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, tokenizer)
    batch = synthetic_batch(batch_size, image_size_of(cfg.model.vision), text_length or cfg.data.max_text_len,
                            tokenizer.vocab_size, max(tokenizer.special_ids) + 1)
    progress = MID_RUN  # the count is the same for every train.steps, so a budget can be counted before it has any
    result = count_step(method, batch, progress, cross_check, cfg.seed)
    if vocab_heads_on_all_tokens:
        price_vocab_heads_on_all_tokens(result, method, batch.input_ids.shape[1])
    return result


def price_vocab_heads_on_all_tokens(result: StepFlops, method: VLPMethod, text_length: int) -> None:
    """Replace the forward count of each MLM-head call (vlpbench: masked positions only) by the
    head counted on every text position, as BERT's reference MLM computes it (forward only)."""
    heads = [name for name, module in component_modules(method).items() if isinstance(module, MLMHead)]
    for row in heads:
        text_model = method.get_submodule(row.rsplit(".", 1)[0])
        counter = StepFlopCounter(method)
        with counter, torch.no_grad():
            text_model.mlm_logits(torch.zeros(result.batch_size, text_length, text_model.width))
        calls = {key[2] for key in result.counts if key[0] == "forward" and key[1] == row}
        for key in [k for k in result.counts if k[0] == "forward" and k[1] == row]:
            del result.counts[key]
        for (phase, _, _, kind), flops in counter.counts.items():
            for call in calls:
                result.counts[(phase, row, call, kind)] = flops


def report(result: StepFlops, convention: Convention, name: str, text_length: int) -> dict:
    """The JSON of ``vlpbench flops``: convention, per-component rows, totals and cross-checks."""
    scale = 1.0 / 2 if convention.multiply_adds else 1.0
    forward = Convention(convention.multiply_adds, False, convention.attention)
    kinds = defaultdict(float)
    for (phase, _, _, kind), flops in result.counts.items():
        kinds[f"{phase}_{kind}"] += flops * scale / result.batch_size
    out = {"experiment": name, "convention": convention.words(), "convention_text": convention.describe(),
           "batch_size": result.batch_size, "text_length": text_length,
           "per_sample": result.per_sample(convention), "forward_per_sample": result.per_sample(forward),
           "by_kind": dict(kinds), "components": result.components(convention)}
    if result.fvcore is not None:
        if convention.attention:  # fvcore's per-module totals hold every kind, comparable only then
            fv_unit = 1.0 if convention.multiply_adds else 2.0
            for row in out["components"]:
                row["fvcore"] = result.fvcore["by_component"].get(row["component"], 0) * fv_unit / result.batch_size
        fv = result.fvcore_per_sample(forward)
        out["cross_check"] = {
            "fvcore_forward": fv, "fvcore_relative_difference": fv / out["forward_per_sample"] - 1,
            "ptflops_forward_linear_macs": result.ptflops / result.batch_size,
            "ptflops_relative_difference": result.ptflops / result.batch_size / result.linear_with_bias_macs() - 1}
    return out


def format_report(rep: dict) -> str:
    unit = "GMACs" if rep["convention"].startswith("macs") else "GFLOPs"
    lines = [f"{rep['experiment']}: {rep['convention_text']}",
             f"(batch {rep['batch_size']}, text length {rep['text_length']}; forward by component, {unit})",
             f"{'component':<30} {'calls':>5} {'per call':>24} {'forward':>10} {'fvcore':>10}"]
    for row in sorted(rep["components"], key=lambda r: -r["total"]):
        per_call = " ".join(f"{x / 1e9:.3f}" for x in row["per_call"][:4]) + (" ..." if row["calls"] > 4 else "")
        fv = f"{row['fvcore'] / 1e9:>10.3f}" if "fvcore" in row else ""
        lines.append(f"{row['component']:<30} {row['calls']:>5} {per_call:>24} {row['total'] / 1e9:>10.3f} {fv}")
    lines.append(f"{'forward total':<30} {'':>5} {'':>24} {rep['forward_per_sample'] / 1e9:>10.3f}")
    lines.append(f"{'counted (' + rep['convention'] + ')':<61} {rep['per_sample'] / 1e9:>10.3f}")
    check = rep.get("cross_check")
    if check:
        lines.append(f"cross-check: fvcore forward {check['fvcore_forward'] / 1e9:.3f} "
                     f"({check['fvcore_relative_difference']:+.3%}); ptflops (aten) layers + bias adds, forward "
                     f"{check['ptflops_forward_linear_macs'] / 1e9:.3f} GMACs ({check['ptflops_relative_difference']:+.3%})")
    return "\n".join(lines)
