"""The course's full experiments, each runnable as a script with the notebooks' code::

    python -m enf_lib.experiments cifar10-classification --profile quick --out runs/cls
    python -m enf_lib.experiments ombria-segmentation --profile standard --out runs/seg
    python -m enf_lib.experiments cifar10-diffusion --profile full --out runs/gen fit.batch_size=64

Each experiment is a package of three modules, ``config`` (a frozen dataclass ``Config`` and
``PROFILES = {"quick": ..., "standard": ..., "full": ...}``), ``stages`` and ``figures``; its top
level exports them with ``run(config, run) -> metrics``, which chains the stages (see
:mod:`enf_lib.experiments.runner`).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from enf_lib.experiments.runner import Run, load_metrics, override

EXPERIMENTS: dict[str, str] = {
    "cifar10-classification": "enf_lib.experiments.cifar10_classification",
    "ombria-segmentation": "enf_lib.experiments.ombria_segmentation",
    "cifar10-diffusion": "enf_lib.experiments.cifar10_diffusion",
}
"""Experiment names (as typed on the command line) and their modules."""


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def make_config(name: str, profile: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The config of experiment ``name`` in ``profile``, with ``field=value`` overrides."""
    module = get_experiment(name)
    if profile not in module.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(module.PROFILES)}")
    return override(module.PROFILES[profile], list(overrides))


def run_experiment(name: str, profile: str, out: str | os.PathLike,
                   overrides: list[str] | tuple[str, ...] = (), *,
                   verbose: bool = True) -> dict[str, Any]:
    """Run every stage of experiment ``name`` into ``out``; returns what ``metrics.json`` holds."""
    module = get_experiment(name)
    config = make_config(name, profile, overrides)
    run = Run(out, name, profile if not overrides else f"{profile}+overrides", config,
              verbose=verbose)
    return module.run(config, run)


__all__ = ["EXPERIMENTS", "Run", "get_experiment", "load_metrics", "make_config", "override",
           "run_experiment"]
