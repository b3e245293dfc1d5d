"""Atomic file writes: write a temporary file in the same folder, then rename over the target.

Temporary files are created with mode 0666 less the user's umask, like any other file, so a
run directory on a shared cluster is as readable as the user's umask allows (``mkstemp`` would
make every atomically written file private, mode 0600).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from vlpbench.errors import UserError


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _disk_full(exc, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(f"{path}: no space left to write it ({written / 2**20:.1f} MiB were written when the "
                                f"write failed; {free / 2**20:.1f} MiB free there now). Free space on that "
                                "filesystem, or move output_dir to one with room") from None
        raise


class DiskFullError(UserError, OSError):
    """A write that failed for lack of space, naming the file and the space."""


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for lack of space (torch.save reports it as an 'enforce fail'
    RuntimeError without saying so)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, RuntimeError) and shutil.disk_usage(folder).free < 2**20


def build_folder_atomically(folder: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary sibling of ``folder``, then rename it into place, so readers see the
    folder complete or not at all; if a concurrent process published it first, keep theirs."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # a concurrent process published it first (checking before renaming would race)
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1))


def save_torch(path: Path, obj: Any) -> None:
    import torch  # here, so that the JSON and text writers load without it
    _atomic(path, lambda f: torch.save(obj, f), "wb")


def append_jsonl(path: Path, record: dict) -> None:
    """One line per call, flushed; a crash can lose at most the line being written."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class CorruptFileError(UserError, ValueError):
    """A file vlpbench wrote that no longer parses (truncated by a crash, edited by hand)."""


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ``CorruptFileError`` naming the file if it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON (truncated or edited?): {exc}") from None
