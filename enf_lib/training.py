"""Training loops: progress bar, logging, checkpoints and resuming.

* :func:`meta_train` meta-learns an ENF (:class:`~enf_lib.fitting.MetaLearner`).
* :func:`train_model` trains any NNX model on arrays with a loss function (the downstream
  models: classifiers, mask decoders, diffusion transformers), optionally with an exponential
  moving average (EMA) of its weights.

Both run on :func:`run_loop`: one jitted step per iteration, batches drawn on the device, metrics
fetched only every ``log_every`` steps, orbax checkpoints with exact resume, and a run that is
already finished is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from enf_lib.checkpoint import Checkpointer, config_dict
from enf_lib.fitting import MetaLearner, MetaState, check_images
from enf_lib.progress import progress
from enf_lib.provenance import fingerprint
from enf_lib.tracking import MetricLogger

Array = jax.Array
S = TypeVar("S")


def run_loop(
    step_fn: Callable[[S, Array], tuple[S, dict[str, Array]]],
    state: S,
    *,
    steps: int,
    key: Array,
    checkpoint_dir: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    data: Any = None,
    checkpoint_every: int = 500,
    log_every: int = 10,
    logger: MetricLogger | None = None,
    desc: str = "training",
) -> tuple[S, MetricLogger]:
    """Call ``state, metrics = step_fn(state, key)`` until ``state.step == steps``.

    ``step_fn`` must be jitted and must fold ``state.step`` into ``key`` itself, so that a
    resumed run draws exactly the batches an uninterrupted one would. With ``checkpoint_dir``,
    the newest checkpoint is restored first (refused if it was made with another ``config``,
    ``key`` or ``data``, the arrays ``step_fn`` trains on, compared by fingerprint; or if it went
    beyond ``steps``; nothing to do when it reached ``steps``) and the state is saved every
    ``checkpoint_every`` steps and at the end, with the history as ``history.json`` beside it.

    Returns the final state and the logger (metrics per logged step, and this call's
    ``wall_time_s``).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    logger = MetricLogger() if logger is None else logger
    ckpt = history = None
    if checkpoint_dir is not None:
        raw_key = jax.random.key_data(key) if jax.dtypes.issubdtype(
            key.dtype, jax.dtypes.prng_key) else key
        ckpt = Checkpointer(checkpoint_dir, config={
            **(config or {}), "key": np.asarray(raw_key).tolist(),
            "data": fingerprint(*jax.tree.leaves(data))})
        history = Path(checkpoint_dir) / "history.json"
        latest = ckpt.latest_step()
        if latest is not None and latest > steps:
            ckpt.close()
            raise ValueError(
                f"the checkpoint in {checkpoint_dir} is at step {latest}, beyond the requested "
                f"steps={steps}: ask for at least {latest} steps, or use another folder")
        if latest is not None:
            state = ckpt.restore(state)
            if history.exists():
                logger.load(history, up_to_step=int(state.step))
    start = int(state.step)
    try:
        bar = progress(total=steps, initial=start, desc=desc, unit="step")
        pending: list[tuple[int, dict[str, Array]]] = []
        t0 = time.perf_counter()
        for step in range(start, steps):
            state, metrics = step_fn(state, key)
            pending.append((step + 1, metrics))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                for s, m in jax.device_get(pending):
                    logger.log(s, {k: float(v) for k, v in m.items()})
                pending.clear()
                bar.set_postfix({k: f"{v[-1][1]:.4g}" for k, v in logger.history.items()
                                 if k != "wall_time_s"})
            bar.update(1)
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                ckpt.save(step + 1, state)
                logger.save(history)
        if steps > start:
            jax.block_until_ready(state)
            logger.log(steps, {"wall_time_s": time.perf_counter() - t0})
            if ckpt is not None:
                logger.save(history)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    return state, logger


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
    Checkpointing, resuming and skipping as in :func:`run_loop` (the checkpoint is keyed by the
    configs, a fingerprint of ``images`` and ``key``); step ``i`` uses ``fold_in(key, i)``, so a
    resumed run draws the same batches.

    Returns the final state and the logger: ``logger.history`` holds loss and PSNR per step and
    the wall time of this call, also saved as ``history.json`` beside the checkpoints, so a
    resumed or skipped run still has its training curves.
    """
    data = check_images(images, learner.image_shape, learner.enf.num_out)
    if data.shape[0] < learner.cfg.batch_size:
        raise ValueError(f"{data.shape[0]} images are fewer than batch_size={learner.cfg.batch_size}")
    return run_loop(lambda s, k: learner.train_step(s, data, k), state, steps=steps, key=key,
                    checkpoint_dir=checkpoint_dir, config=config_dict(learner.enf, learner.cfg),
                    data=images, checkpoint_every=checkpoint_every, log_every=log_every,
                    logger=logger, desc=desc)


# ------------------------------------------------------------------------------------------
# Supervised training of downstream models
# ------------------------------------------------------------------------------------------

LossFn = Callable[[nnx.Module, dict[str, Array], Array], tuple[Array, dict[str, Array]]]
"""``loss_fn(model, batch, key) -> (loss, metrics)``: a scalar loss and scalar metrics."""


@struct.dataclass
class TrainState:
    """Parameters, optimiser state, ``optax.ema`` state of the parameters (or ``None``) and
    steps taken."""

    params: Any
    opt_state: Any
    ema: Any
    step: Array


def epoch_batch(key: Array, step: Array, num: int, batch_size: int) -> Array:
    """Indices ``(batch_size,)`` of batch ``step``: epochs are random permutations of ``num``
    items (drawn from ``fold_in(key, epoch)``) cut into ``num // batch_size`` batches, so every
    item is seen once per epoch (a remainder smaller than a batch is skipped that epoch)."""
    per_epoch = num // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num)
    return jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)


def train_model(
    model: nnx.Module,
    loss_fn: LossFn,
    data: dict[str, Any],
    *,
    steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation,
    key: Array,
    ema_decay: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 50,
    logger: MetricLogger | None = None,
    desc: str = "training",
) -> tuple[nnx.Module, MetricLogger]:
    """Train ``model`` for ``steps`` steps of ``optimizer`` on ``loss_fn`` over ``data``.

    Args:
      model: an NNX module whose ``nnx.Param`` are trained (it is not modified: a trained copy
        is returned). Its other state (if any) stays fixed.
      loss_fn: ``(model, batch, key) -> (loss, metrics)``; ``batch`` holds ``batch_size`` rows of
        every array in ``data``; ``key`` is fresh each step (augmentation, dropout, noise).
      data: arrays with a common leading axis ``M``; moved to the device once (float arrays
        with NaN or inf are refused).
      ema_decay: also keep a debiased exponential moving average of the parameters
        (``optax.ema``: the initial weights get no weight at all, however slow the decay); the
        returned model then carries the EMA weights.
      checkpoint_dir, config: checkpoint, resume and skip as in :func:`run_loop` (the
        checkpoint is also keyed by a fingerprint of ``data`` and by ``key``).

    Returns:
      The trained model (EMA weights when ``ema_decay`` is set) and the logger.
    """
    sizes = {name: np.shape(a)[0] for name, a in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"data arrays differ in length: {sizes}")
    num = next(iter(sizes.values()))
    if not 1 <= batch_size <= num:
        raise ValueError(f"batch_size={batch_size} must be in [1, {num}] (the data size)")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    device_data = {name: jnp.asarray(a) for name, a in data.items()}
    for name, a in device_data.items():   # once, before the loop: one reduction per array
        if jnp.issubdtype(a.dtype, jnp.inexact) and not bool(jnp.isfinite(a).all()):
            raise ValueError(f"data[{name!r}] contains NaN or infinite values")
    ema_tx = optax.ema(ema_decay, debias=True) if ema_decay is not None else None

    def loss(p: Any, batch: dict[str, Array], k: Array) -> tuple[Array, dict[str, Array]]:
        return loss_fn(nnx.merge(graphdef, p, rest), batch, k)

    @jax.jit
    def step_fn(state: TrainState, data: dict[str, Array], key: Array
                ) -> tuple[TrainState, dict[str, Array]]:
        # The epochs' permutations come from one key for the whole run; the loss gets a new
        # key every step.
        k_epochs, k_steps = jax.random.split(key)
        idx = epoch_batch(k_epochs, state.step, num, batch_size)
        batch = {name: a[idx] for name, a in data.items()}
        k_loss = jax.random.fold_in(k_steps, state.step)
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch, k_loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema if ema_tx is None else ema_tx.update(params, state.ema)[1]
        return TrainState(params, opt_state, ema, state.step + 1), {"loss": value, **metrics}

    ema0 = ema_tx.init(params) if ema_tx is not None else None
    state = TrainState(params, optimizer.init(params), ema0, jnp.zeros((), jnp.int32))
    state, logger = run_loop(lambda s, k: step_fn(s, device_data, k), state, steps=steps, key=key,
                             checkpoint_dir=checkpoint_dir, config=config, data=data,
                             checkpoint_every=checkpoint_every, log_every=log_every,
                             logger=logger, desc=desc)
    final = state.params if ema_tx is None else optax.tree_utils.tree_bias_correction(
        state.ema.ema, ema_decay, state.ema.count)
    return nnx.merge(graphdef, final, rest), logger
