"""Where a result came from: configuration, code version, library versions, hardware, time."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from enf_lib._io import download_file
from enf_lib.datasets import cache_dir

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the ``enf_lib`` package: a checkout, or ``site-packages``."""


def _source_checkout() -> Path | None:
    """The git checkout this package runs from (an editable install), or None."""
    return _PACKAGE_ROOT if (_PACKAGE_ROOT / ".git").exists() else None


def _checkout_above(folder: Path) -> Path | None:
    """The git checkout of the course holding ``folder`` (a clone next to a plain install), or
    None."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists() and (candidate / "enf_lib").is_dir():
            return candidate
    return None


def _installed() -> tuple[str, dict[str, Any]]:
    """The installed package's version and its PEP 610 install record (``direct_url.json``,
    ``{}`` when the installer wrote none)."""
    dist = metadata.distribution("enf_lib")
    return dist.version, json.loads(dist.read_text("direct_url.json") or "{}")


def installed_commit() -> str | None:
    """The git commit the installed package was built from: ``vcs_info.commit_id`` of a VCS
    install (``pip install git+https://...``), else the ``+g<hash>`` that setuptools-scm put in
    the version (``pip install .`` from a checkout; ``+dirty`` when its tree was modified), else
    None (built without git)."""
    version, record = _installed()
    if commit := record.get("vcs_info", {}).get("commit_id"):
        return commit
    if match := re.search(r"\+g([0-9a-f]{7,40})(\.d\d{8})?$", version):
        return match[1] + ("+dirty" if match[2] else "")
    return None


def code_version() -> str:
    """Which code made a result: ``git describe`` of the checkout this package runs from
    (``+dirty`` when modified), else the commit it was installed from, else
    ``enf_lib <version>``."""
    if (root := _source_checkout()) is not None:
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=root,
                                 capture_output=True, text=True, timeout=10, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return installed_commit() or f"enf_lib {_installed()[0]}"


def _fetch_from_github(relpath: str) -> Path | None:
    """``relpath`` of the GitHub repository and commit of a VCS install, downloaded once into
    ``cache_dir()/committed/<commit>/``; None when not installed from GitHub or not fetched."""
    record = _installed()[1]
    commit = record.get("vcs_info", {}).get("commit_id")
    repo = re.search(r"github\.com[/:]([^/]+/[^/]+?)(?:\.git)?/?$", record.get("url", ""))
    if not commit or repo is None:
        return None
    target = cache_dir() / "committed" / commit / relpath
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_file(f"https://raw.githubusercontent.com/{repo[1]}/{commit}/{relpath}",
                          target, desc=relpath, check=lambda path, name: None)
        except OSError:  # no such file at that commit (HTTP 404), no network, a timeout
            return None
    return target


def committed_file(relpath: str) -> Path | None:
    """A text file committed to the course repository, by its path in it (e.g.
    ``"benchmarks/results/meta_step-cpu.json"``): from the checkout this package runs from, else
    from a checkout holding the working directory, else from GitHub at the commit ``enf_lib``
    was installed from; None when none of them has it."""
    for root in (_source_checkout(), _checkout_above(Path.cwd())):
        if root is not None and (root / relpath).is_file():
            return root / relpath
    return _fetch_from_github(relpath)


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
