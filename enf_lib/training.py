"""The meta-training loop: progress bar, logging, checkpoints and resuming."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import numpy as np

from enf_lib.checkpoint import Checkpointer, config_dict
from enf_lib.fitting import MetaLearner, MetaState, check_images
from enf_lib.progress import progress
from enf_lib.tracking import MetricLogger


def meta_train(
    learner: MetaLearner,
    state: MetaState,
    images: np.ndarray | jax.Array,
    *,
    steps: int,
    key: jax.Array,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    log_every: int = 10,
    logger: MetricLogger | None = None,
    desc: str = "meta-training",
) -> tuple[MetaState, MetricLogger]:
    """Meta-train until ``state.step == steps`` on random batches of ``images (M, H, W, C)``.

    The images move to the device once; each jitted step draws its batch there, so the loop
    never copies data or waits for the device except every ``log_every`` steps to log.
    With ``checkpoint_dir``, the newest checkpoint is restored first (training is skipped when
    it already reached ``steps``) and the state is saved every ``checkpoint_every`` steps and at
    the end. Step ``i`` uses ``fold_in(key, i)``, so a resumed run draws the same batches.

    Returns the final state and the logger: ``logger.history`` holds loss and PSNR per step and
    the wall time of this call, also saved as ``history.json`` beside the checkpoints, so a
    resumed or skipped run still has its training curves.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    data = check_images(images, learner.image_shape, learner.enf.num_out)
    if data.shape[0] < learner.cfg.batch_size:
        raise ValueError(f"{data.shape[0]} images are fewer than batch_size={learner.cfg.batch_size}")
    logger = MetricLogger() if logger is None else logger
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, config=config_dict(learner.enf, learner.cfg))
        history = Path(checkpoint_dir) / "history.json"
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state)
            if history.exists():
                logger.load(history, up_to_step=int(state.step))
    start = int(state.step)
    try:
        bar = progress(total=steps, initial=start, desc=desc, unit="step")
        pending: list[tuple[int, dict[str, jax.Array]]] = []
        t0 = time.perf_counter()
        for step in range(start, steps):
            state, metrics = learner.train_step(state, data, key)
            pending.append((step + 1, metrics))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                for s, m in jax.device_get(pending):
                    logger.log(s, {k: float(v) for k, v in m.items()})
                pending.clear()
                bar.set_postfix(loss=f"{logger.history['loss'][-1][1]:.4f}",
                                psnr=f"{logger.history['psnr'][-1][1]:.2f}")
            bar.update(1)
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                ckpt.save(step + 1, state)
                logger.save(history)
        if steps > start:
            logger.log(steps, {"wall_time_s": time.perf_counter() - t0})
            if ckpt is not None:
                logger.save(history)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    return state, logger

