"""Atomic writes for caches, run folders and histories: a uniquely named temporary file in the
target's folder, renamed over the target when complete, so that an interrupted write or two
writers at once never leave a half-written file under the real name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np


STALE_AFTER_S = 3600.0
"""Temporary files and folders left this long unmodified are an interrupted write's (a hard kill
skips every cleanup), and the next write to the same target removes them."""


def remove_stale(folder: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Delete the entries of ``folder`` named ``prefix*suffix`` that were last modified more
    than :data:`STALE_AFTER_S` ago (files or folders); returns what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    cutoff = time.time() - STALE_AFTER_S
    for entry in folder.glob(f"{prefix}*{suffix}"):
        with contextlib.suppress(FileNotFoundError):        # another process removed it
            if entry.lstat().st_mtime < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _atomic(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.", ".tmp")
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
