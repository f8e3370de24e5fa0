"""The two ENF stages every experiment starts with: meta-train the decoder, fit latents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from enf_lib.experiments.runner import Run
from enf_lib.fitting import MetaLearner, MetaState
from enf_lib.latents import Latents, latents_from_arrays, latents_to_arrays
from enf_lib.tracking import MetricLogger
from enf_lib.training import meta_train


def steps_done(folder: Path) -> int:
    """Steps a checkpointed training loop in ``folder`` had finished (0 when none)."""
    history = folder / "history.json"
    if not history.exists():
        return 0
    losses = json.loads(history.read_text()).get("loss", [])
    return losses[-1][0] if losses else 0


def record_loop(record: dict[str, Any], log: MetricLogger, done_before: int,
                steps: int) -> None:
    """Mark a training stage reused when it had finished before this run, and record the wall
    time it took in total (over all the runs that trained it)."""
    record["reused"] = done_before >= steps
    record["compute_time_s"] = round(sum(v for _, v in log.history.get("wall_time_s", [])), 3)


def meta_train_stage(run: Run, learner: MetaLearner, images: np.ndarray, *, steps: int,
                     seed: int, data_id: Any, name: str = "meta_train",
                     checkpoint_every: int = 500) -> tuple[MetaState, MetricLogger]:
    """Meta-train ``learner`` on ``images`` for ``steps`` outer steps, checkpointed in the run.

    The stage is keyed by the decoder and fitting configs, ``data_id`` (which of the loaded
    images it trains on, e.g. ``("cifar10", "train", 512)``), ``seed`` and ``steps``; a rerun
    resumes an interrupted training, or reuses a finished one.
    """
    with run.stage(name) as record:
        folder = run.stage_dir(name, {"enf": learner.enf, "fit": learner.cfg, "data": data_id,
                                      "seed": seed, "steps": steps})
        done_before = steps_done(folder)
        key = jax.random.key(seed)
        state, log = meta_train(learner, learner.init(key), images, steps=steps,
                                key=jax.random.fold_in(key, 1), checkpoint_dir=folder,
                                checkpoint_every=checkpoint_every,
                                desc=f"{name} ({run.experiment})")
        record_loop(record, log, done_before, steps)
    return state, log


def fit_latents_stage(run: Run, name: str, learner: MetaLearner, state: MetaState,
                      images: np.ndarray, *, data_id: Any, reads: str, seed: int,
                      batch_size: int = 256, score: bool = True,
                      ) -> tuple[Latents, np.ndarray | None]:
    """Latents ``(M, ...)`` and per-image PSNR ``(M,)`` (``None`` with ``score=False``) for
    ``images`` with the frozen decoder ``state``, which the stage named ``reads`` trained.

    Cached in the run under ``name``, keyed by that stage, ``data_id`` (which images these
    are), ``seed``, ``batch_size`` (each chunk draws its own key) and ``score``.
    """
    def compute() -> dict[str, np.ndarray]:
        z, scores = learner.fit_dataset(state, images, jax.random.key(seed), batch_size=batch_size,
                                        score=score, desc=f"{name} ({run.experiment})")
        return {**latents_to_arrays(z), **({"psnr": scores} if score else {})}

    config = {"data": data_id, "seed": seed, "batch_size": batch_size, "score": score}
    arrays = run.cached(name, config, compute, reads=(reads,))
    return latents_from_arrays(arrays), arrays.get("psnr")
