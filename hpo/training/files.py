"""Atomic file writes: readers (a resumed trial, a rerun checking done.json, a user tailing
metrics.json) and a process killed mid-write never leave half a file, only the previous one.

The one writer behind checkpoints, weights, run histories and the calibrated scheduler's state.
Room `hpo.training`: plain Python/PyTorch, never imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)          # a failed write leaves the previous file and nothing else
        raise
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
