"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENV_DATA_DIR = os.environ.get("ENF_DATA_DIR")  # read at import, before any test changes it


def _real_data_root() -> Path | None:
    for base in (ENV_DATA_DIR, SHARED_DATA):
        if base and (Path(base) / "cifar10" / "cifar10-jpeg.zip").is_file():
            return Path(base)
    return None


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder with cifar10/cifar10-jpeg.zip, a cache folder shared by the session)."""
    root = _real_data_root()
    if root is None:
        pytest.skip("no cifar10/cifar10-jpeg.zip in ENF_DATA_DIR or ../shared/data")
    return root, tmp_path_factory.mktemp("enf-cache")
