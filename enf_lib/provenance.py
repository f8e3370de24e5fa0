"""Where a result came from: configuration, code version, library versions, hardware, time."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np


def code_version() -> str:
    """``git describe`` of the checkout this package runs from (``+dirty`` when modified),
    else the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=root,
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"enf_lib {metadata.version('enf_lib')}"


def fingerprint(*arrays: Any) -> str:
    """A short hash of the shapes, dtypes and bytes of ``arrays`` (NumPy or JAX): it tells two
    data sets apart, e.g. two copies of CIFAR-10, in cache and checkpoint keys."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.data)
    return h.hexdigest()


def device_description() -> str:
    """The default JAX device, e.g. ``"gpu: NVIDIA H100 80GB HBM3 (x1)"`` or ``"cpu: 2 cores"``."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu: {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"{d.platform}: {getattr(d, 'device_kind', '?')} (x{jax.device_count()})"


def provenance(**extra: Any) -> dict[str, Any]:
    """A JSON-friendly record to save beside every result (``extra`` adds config, wall time, ...)."""
    versions = {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}
    return {
        "code_version": code_version(),
        "versions": versions,
        "python": platform.python_version(),
        "device": device_description(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
