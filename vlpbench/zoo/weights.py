"""Loading pretrained weights from a local path (file or directory) or a hub name."""

from __future__ import annotations

from pathlib import Path

import torch

_DIR_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "open_clip_model.safetensors")
_NESTED_KEYS = ("model", "state_dict", "module")


def load_state_dict_from(source: str, kind: str) -> dict[str, torch.Tensor]:
    """Read a flat state dict from ``source``.

    A local file may be safetensors or a torch pickle (optionally nested under "model",
    "state_dict" or "module"); a directory must hold one of the usual Hugging Face file names.
    Anything else is taken as a hub name and needs network access.
    """
    path = Path(source).expanduser()
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
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
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
