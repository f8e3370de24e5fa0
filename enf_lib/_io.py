"""Atomic writes for caches, run folders and histories: a uniquely named temporary file in the
target's folder, renamed over the target when complete, so that an interrupted write or two
writers at once never leave a half-written file under the real name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np


@contextlib.contextmanager
def _atomic(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save ``arrays`` as the ``.npz`` file ``path``, atomically."""
    with _atomic(path, "wb") as file:
        np.savez(file, **arrays)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with _atomic(path, "w") as file:
        file.write(text)
