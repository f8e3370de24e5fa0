"""Fitting latents to signals (the inner loop) and meta-learning the decoder (the outer loop).

Inner loop: starting from the grid initialisation, a few gradient steps on the reconstruction
error move each signal's latents, with one learning rate per latent component (SGD) or one
learned rate per latent entry (Meta-SGD). Outer loop: Adam on the decoder parameters (and the
Meta-SGD rates) through the inner loop, in second order (MAML: differentiate through the inner
gradients) or first order (treat the inner gradients as constants).

Everything here is pure and jit-compiled once per shape: the inner loop is a ``lax.scan``
(unrolled when short and second order), batches are drawn on the device from a data set that
lives on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from enf_lib.batching import num_batches, padded_batches, random_subset
from enf_lib.config import ENFConfig, FitConfig
from enf_lib.coordinates import coordinate_grid, images_to_signals
from enf_lib.latents import Latents, init_latents_batch
from enf_lib.model import EquivariantNeuralField, functional
from enf_lib.progress import progress

Array = jax.Array

# Second-order inner loops of at most this many steps are unrolled: XLA then fuses across the steps
# instead of stacking each step's activations for the backward pass through the loop (a
# second-order meta-step at the reference config on 2 CPU cores: 3.7 s -> 2.6 s). First-order loops
# have no backward pass through them and run faster rolled (measured); longer loops stay rolled
# so that compile time stays bounded.
UNROLL_MAX_STEPS = 8


def psnr_from_mse(mse: Array, max_val: float = 1.0) -> Array:
    """Peak signal-to-noise ratio in dB of a mean squared error: ``10 log10(max_val^2 / MSE)``
    (any shape; an MSE of 0 counts as 1e-12)."""
    return 10.0 * jnp.log10(max_val**2 / jnp.maximum(mse, 1e-12))


def psnr(pred: Array, target: Array, max_val: float = 1.0) -> Array:
    """Per-signal peak signal-to-noise ratio in dB: ``(B, ...) x (B, ...) -> (B,)``.

    :func:`psnr_from_mse` of the MSE over all entries of each signal; ``pred`` is clipped to
    ``[0, max_val]`` first, as when displaying the image.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    err = jnp.square(jnp.clip(pred, 0.0, max_val) - target)
    return psnr_from_mse(jnp.mean(err.reshape(err.shape[0], -1), axis=1), max_val)


def per_signal_mse(pred: Array, target: Array) -> Array:
    """``(B, N, C) x (B, N, C) -> (B,)`` mean squared error of each signal."""
    return jnp.mean(jnp.square(pred - target), axis=(1, 2))


@struct.dataclass
class MetaState:
    """Everything that changes during meta-training.

    Attributes:
      params: decoder parameters (an ``nnx.State``).
      rates: inner learning rates as a :class:`Latents` of per-entry rates, shapes
        ``(L, pose_dim)``, ``(L, latent_dim)``, ``(L, 1)``; trained only with Meta-SGD (as
        log-rates, by their own Adam), 0 for a frozen component.
      opt_state: optax state of the trainable part.
      step: outer steps taken.
      init_rates: ``(lr_pose, lr_context, lr_window)`` of the :class:`FitConfig` that set
        ``rates`` (static, not an array: free under ``jax.jit``); a learner whose config has
        other rates refuses the state (see :meth:`MetaLearner.with_config`).
    """

    params: Any
    rates: Latents
    opt_state: Any
    step: Array
    init_rates: tuple[float, float, float] = struct.field(pytree_node=False)


class MetaLearner:
    """Meta-learns an :class:`EquivariantNeuralField` and fits latents with it.

    Example::

        learner = MetaLearner(ENFConfig(), FitConfig(), image_shape=(32, 32))
        state = learner.init(jax.random.key(0))
        state, metrics = learner.train_step(state, data, jax.random.key(1))
        latents = learner.fit(state, images, jax.random.key(2))
    """

    def __init__(self, enf: ENFConfig, fit: FitConfig, image_shape: tuple[int, int]):
        self.enf, self.cfg = enf, fit
        self.image_shape = tuple(image_shape)
        self.coords = coordinate_grid(*self.image_shape)                       # (N, 2)
        self.model = EquivariantNeuralField(enf, rngs=nnx.Rngs(0))
        self.apply, _ = functional(self.model)
        self.bi_invariant = self.model.bi_invariant
        decoder_opt = optax.chain(
            optax.clip_by_global_norm(fit.grad_clip) if fit.grad_clip else optax.identity(),
            optax.adam(fit.outer_lr),
        )
        # Meta-SGD rates get their own Adam, on log-rates: each step changes a rate by a fraction
        # of itself, so rates of 2 and of 30 move alike (with the decoder's 5e-4 they would not move).
        self.optimizer = optax.multi_transform(
            {"params": decoder_opt, "log_rates": optax.adam(fit.meta_sgd_lr)},
            {"params": "params", "log_rates": "log_rates"}) if fit.meta_sgd else decoder_opt
        # A component with rate 0 is frozen, also under Meta-SGD.
        self._rate_mask = Latents(pose=jnp.float32(fit.lr_pose > 0),
                                  context=jnp.float32(fit.lr_context > 0),
                                  window=jnp.float32(fit.lr_window > 0))
        self.train_step = _FiniteData(jax.jit(self._train_step, donate_argnums=0))
        self.outer_grads = jax.jit(self._outer_grads)
        self._fit = jax.jit(self._fit_impl, static_argnames="steps")

    # ----------------------------------------------------------------- state
    @property
    def _lrs(self) -> tuple[float, float, float]:
        return self.cfg.lr_pose, self.cfg.lr_context, self.cfg.lr_window

    def _initial_rates(self) -> Latents:
        e, f = self.enf, self.cfg
        # Explicit float32: weakly typed arrays would make the first jitted step compile twice.
        return Latents(
            pose=jnp.full((e.num_latents, self.bi_invariant.pose_dim), f.lr_pose, jnp.float32),
            context=jnp.full((e.num_latents, e.latent_dim), f.lr_context, jnp.float32),
            window=jnp.full((e.num_latents, 1), f.lr_window, jnp.float32),
        )

    def init(self, key: Array) -> MetaState:
        """Fresh decoder parameters from ``key`` and inner rates from the config."""
        _, params = nnx.split(EquivariantNeuralField(self.enf, rngs=nnx.Rngs(key)))
        rates = self._initial_rates()
        trainable = self._trainable(params, rates)
        return MetaState(params, rates, self.optimizer.init(trainable), jnp.zeros((), jnp.int32),
                         self._lrs)

    def reset_rates(self, state: MetaState) -> MetaState:
        """``state`` with the inner rates of this learner's config (discarding rates learned by
        Meta-SGD); decoder parameters, optimiser state and step are kept."""
        return state.replace(rates=self._initial_rates(), init_rates=self._lrs)

    def restart_optimizer(self, state: MetaState) -> MetaState:
        """``state`` with a fresh outer optimiser state for this learner (e.g. to go on with
        Meta-SGD from a decoder trained without it); parameters, rates and step are kept."""
        return state.replace(opt_state=self.optimizer.init(self._trainable(state.params, state.rates)))

    def _check_optimizer(self, state: MetaState) -> None:
        """``ValueError`` unless ``state.opt_state`` is this learner's optimiser's (checked when
        the step is traced, from shapes only)."""
        expected = jax.eval_shape(lambda: self.optimizer.init(self._trainable(state.params, state.rates)))
        if jax.tree.structure(expected) != jax.tree.structure(state.opt_state):
            raise ValueError(
                f"the state's optimiser state was made by another outer optimiser than this "
                f"learner's (meta_sgd={self.cfg.meta_sgd}); start from learner.init(key), or keep "
                "the decoder with learner.restart_optimizer(state)")

    def _check_rates(self, state: MetaState) -> None:
        """``ValueError`` unless ``state``'s rates were set from this config's ``lr_*``."""
        if state.init_rates != self._lrs:
            raise ValueError(
                f"the state's inner rates were set from (lr_pose, lr_context, lr_window) = "
                f"{state.init_rates}, this learner's config has {self._lrs}; a state keeps its "
                "rates, so call learner.reset_rates(state) to use the config's")

    def _trainable(self, params: Any, rates: Latents) -> dict[str, Any]:
        """What the outer optimiser updates: the decoder, plus the log-rates under Meta-SGD."""
        if not self.cfg.meta_sgd:
            return {"params": params}
        low = self.cfg.meta_sgd_clip[0]
        return {"params": params, "log_rates": jax.tree.map(lambda r: jnp.log(jnp.maximum(r, low)), rates)}

    def _rates_from(self, trainable: dict[str, Any], rates: Latents) -> Latents:
        """The inner rates in ``trainable`` (Meta-SGD: its log-rates, kept inside
        ``meta_sgd_clip``), else the fixed ``rates``; frozen components stay 0."""
        if "log_rates" not in trainable:
            return rates
        lo, hi = np.log(self.cfg.meta_sgd_clip)
        return jax.tree.map(lambda r, m: jnp.exp(jnp.clip(r, lo, hi)) * m,
                            trainable["log_rates"], self._rate_mask)

    def decoder(self, state: MetaState) -> EquivariantNeuralField:
        """The decoder module with the parameters of ``state`` (e.g. to call ``attend``)."""
        return nnx.merge(nnx.split(self.model)[0], state.params)

    def init_latents(self, key: Array, batch_size: int) -> Latents:
        """Grid-initialised latents for ``batch_size`` signals (leading axis ``B``)."""
        e = self.enf
        return init_latents_batch(key, batch_size, e.num_latents, e.latent_dim, self.bi_invariant)

    # ------------------------------------------------------------ inner loop
    def _subsample(self, key: Array, num: int | None) -> Array:
        """Indices of ``num`` random coordinates without replacement (all when ``None``)."""
        n = self.coords.shape[0]
        if num is None or num >= n:
            return jnp.arange(n)
        return random_subset(key, n, num)

    def inner_loop(self, params: Any, rates: Latents, latents: Latents, targets: Array,
                   key: Array, *, steps: int | None = None,
                   second_order: bool | None = None) -> Latents:
        """Adapt ``latents`` (batch ``B``) to ``targets (B, N, C)`` by ``steps`` gradient steps.

        The loss is the sum over the batch of per-signal MSE, so each signal gets the gradient of
        its own error. Each step sees ``inner_coords`` random coordinates (all when ``None``).
        """
        steps = self.cfg.inner_steps if steps is None else steps
        second_order = self.cfg.second_order if second_order is None else second_order
        rates = jax.tree.map(jnp.multiply, rates, self._rate_mask)

        def loss(z: Latents, idx: Array) -> Array:
            pred = self.apply(params, self.coords[idx], z)
            return jnp.sum(per_signal_mse(pred, targets[:, idx]))

        def step(z: Latents, k: Array) -> tuple[Latents, None]:
            grads = jax.grad(loss)(z, self._subsample(k, self.cfg.inner_coords))
            if not second_order:
                grads = jax.lax.stop_gradient(grads)
            return jax.tree.map(lambda p, r, g: p - r * g, z, rates, grads), None

        latents, _ = jax.lax.scan(step, latents, jax.random.split(key, steps),
                                  unroll=second_order and steps <= UNROLL_MAX_STEPS)
        return latents

    # ------------------------------------------------------------ outer loop
    def _outer_loss(self, trainable: dict[str, Any], rates: Latents, targets: Array,
                    key: Array) -> tuple[Array, Array]:
        params, rates = trainable["params"], self._rates_from(trainable, rates)
        k_init, k_inner, k_outer = jax.random.split(key, 3)
        z0 = self.init_latents(k_init, targets.shape[0])
        z = self.inner_loop(params, rates, z0, targets, k_inner)
        idx = self._subsample(k_outer, self.cfg.outer_coords)
        pred = self.apply(params, self.coords[idx], z)
        mse = per_signal_mse(pred, targets[:, idx])
        return jnp.mean(mse), pred

    def _batch(self, data: Array, key: Array) -> Array:
        """A batch of ``batch_size`` distinct signals ``(B, N, C)`` drawn from ``data``."""
        idx = random_subset(key, data.shape[0], self.cfg.batch_size)
        return images_to_signals(data[idx])

    def _outer_grads(self, state: MetaState, targets: Array, key: Array) -> tuple[Any, Array]:
        """Gradient of the outer loss w.r.t. the trainable part, and the loss."""
        self._check_rates(state)                    # when tracing: init_rates is static
        trainable = self._trainable(state.params, state.rates)
        (loss, _), grads = jax.value_and_grad(self._outer_loss, has_aux=True)(
            trainable, state.rates, targets, key)
        return grads, loss

    def _train_step(self, state: MetaState, data: Array, key: Array) -> tuple[MetaState, dict[str, Array]]:
        """One outer step on a random batch of ``data (M, H, W, C)``: float in [0, 1], on the
        device (:func:`check_images` makes it so; its dtype and shape are checked here when the
        step compiles, and :class:`_FiniteData` refuses NaN and inf once per array)."""
        if not jnp.issubdtype(data.dtype, jnp.floating):
            raise TypeError(f"train_step needs float images in [0, 1], got {data.dtype} "
                            "(pass check_images(images, ...), which scales uint8 by 1/255)")
        if data.ndim != 4 or data.shape[1:] != (*self.image_shape, self.enf.num_out):
            raise ValueError(f"train_step needs images (M, {self.image_shape[0]}, "
                             f"{self.image_shape[1]}, {self.enf.num_out}), got {data.shape}")
        k_batch, k_loss = jax.random.split(jax.random.fold_in(key, state.step))
        targets = self._batch(data, k_batch)
        self._check_optimizer(state)
        grads, loss = self._outer_grads(state, targets, k_loss)
        trainable = self._trainable(state.params, state.rates)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        new = MetaState(trainable["params"], self._rates_from(trainable, state.rates), opt_state,
                        state.step + 1, state.init_rates)
        return new, {"loss": loss, "psnr": psnr_from_mse(loss)}

    # --------------------------------------------------------------- fitting
    def _fit_impl(self, params: Any, rates: Latents, images: Array, key: Array,
                  steps: int) -> Latents:
        targets = images_to_signals(images)
        k_init, k_inner = jax.random.split(key)
        z0 = self.init_latents(k_init, targets.shape[0])
        return self.inner_loop(params, rates, z0, targets, k_inner, steps=steps)

    def _steps(self, steps: int | None) -> int:
        """The inner steps of a fit: ``steps`` (a positive int), by default the training ones."""
        if steps is None:
            return self.cfg.inner_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        return int(steps)

    def fit(self, state: MetaState, images: Array | np.ndarray, key: Array,
            steps: int | None = None) -> Latents:
        """Latents for ``images (B, H, W, C)`` with the decoder frozen (``steps`` defaults to the
        training inner steps)."""
        self._check_rates(state)
        steps = self._steps(steps)
        images = check_images(images, self.image_shape, self.enf.num_out)
        return self._fit(state.params, state.rates, images, key, steps=steps)

    def decode(self, state: MetaState, latents: Latents,
               shape: tuple[int, int] | None = None) -> Array:
        """Render latents ``(B, ...)`` as images ``(B, H, W, C)`` (on the training grid by default;
        another ``shape`` samples the same field at another resolution)."""
        shape = self.image_shape if shape is None else shape
        out = _decode_jit(self.apply, state.params, coordinate_grid(*shape), latents)
        return out.reshape(out.shape[0], *shape, -1)

    def fit_dataset(self, state: MetaState, images: Array | np.ndarray, key: Array, *,
                    steps: int | None = None, batch_size: int = 256, score: bool = True,
                    desc: str = "fitting latents") -> tuple[Latents, np.ndarray | None]:
        """Fit latents to every image of ``images (M, H, W, C)`` with the decoder frozen.

        Works in chunks of ``batch_size`` with a progress bar. Returns the latents as NumPy
        arrays with leading axis ``M`` and the per-image PSNR ``(M,)`` after fitting, or ``None``
        with ``score=False`` (scoring decodes every pixel: a third of the cost of a 3-step fit
        on 512-pixel subsets).
        """
        self._check_rates(state)
        steps = self._steps(steps)
        images = check_images(images, self.image_shape, self.enf.num_out)   # once, not per batch
        zs, scores = [], []
        batches = padded_batches(images, batch_size)
        for i, (chunk, n) in enumerate(progress(batches, desc=desc, unit="batch",
                                                total=num_batches(len(images), batch_size))):
            z = self._fit(state.params, state.rates, chunk, jax.random.fold_in(key, i), steps=steps)
            if score:
                scores.append(np.asarray(psnr(self.decode(state, z), chunk))[:n])
            zs.append(jax.tree.map(lambda a: np.asarray(a)[:n], z))
        latents = jax.tree.map(lambda *parts: np.concatenate(parts), *zs)
        return latents, np.concatenate(scores) if score else None

    def evaluate(self, state: MetaState, images: Array | np.ndarray, key: Array,
                 steps: int | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Fit and decode ``images`` in chunks; per-image PSNR before and after fitting."""
        self._check_rates(state)
        steps = self._steps(steps)
        images = check_images(images, self.image_shape, self.enf.num_out)
        before, after = [], []
        for i, (chunk, n) in enumerate(padded_batches(images, batch_size)):
            k = jax.random.fold_in(key, i)
            z0 = self.init_latents(jax.random.split(k)[0], chunk.shape[0])
            z = self._fit(state.params, state.rates, chunk, k, steps=steps)
            before.append(np.asarray(psnr(self.decode(state, z0), chunk))[:n])
            after.append(np.asarray(psnr(self.decode(state, z), chunk))[:n])
        return {"psnr_before": np.concatenate(before), "psnr_after": np.concatenate(after)}

    def with_config(self, **changes: Any) -> "MetaLearner":
        """A learner with some :class:`FitConfig` fields changed (same decoder).

        The inner rates live in the state (``MetaState.rates``, learned under Meta-SGD): the
        ``lr_*`` fields only set them in :meth:`init` and :meth:`reset_rates`. So a state takes
        its rates along, and a learner given other ``lr_*`` refuses it (``ValueError``) instead
        of fitting with the old rates: start from ``learner.init(key)``, or call
        ``learner.reset_rates(state)`` to keep the decoder and use the new rates.
        """
        return MetaLearner(self.enf, dataclasses.replace(self.cfg, **changes), self.image_shape)


class _FiniteData:
    """A jitted ``step(state, data, key)`` that first refuses ``data`` with NaN or inf: checked
    once per array (one reduction on the device and one host sync; the array is remembered by
    weak reference), so the steps of a loop over the same data pay nothing. Its other
    attributes (``lower``, ...) are the jitted function's."""

    def __init__(self, step: Callable[..., Any]):
        self._step = step
        self._checked: Callable[[], Any] = lambda: None

    def __call__(self, state: Any, data: Array, key: Array) -> Any:
        if data is not self._checked():
            if not bool(_all_finite(data)):
                raise ValueError("train_step data contain NaN or infinite values")
            self._checked = weakref.ref(data)
        return self._step(state, data, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)


_all_finite = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


@functools.partial(jax.jit, static_argnums=0)
def _decode_jit(apply: Any, params: Any, coords: Array, latents: Latents) -> Array:
    return apply(params, coords, latents)


def check_images(images: Array | np.ndarray, shape: tuple[int, int], channels: int) -> Array:
    """Validate a batch of images ``(B, H, W, C)`` and return it as float32 in ``[0, 1]``.

    uint8 images are scaled by 1/255; float images must already lie in ``[0, 1]``. Raises
    ``ValueError`` for a wrong rank, size or channel count, non-finite or out-of-range values.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"images must have shape (B, H, W, C) with B >= 1, got {arr.shape}")
    if arr.shape[1:3] != tuple(shape):
        raise ValueError(f"images are {arr.shape[1]}x{arr.shape[2]}, the learner expects "
                         f"{shape[0]}x{shape[1]}")
    if arr.shape[3] != channels:
        raise ValueError(f"images have {arr.shape[3]} channels, the decoder outputs {channels}")
    if arr.dtype == np.uint8:
        return jnp.asarray(arr, jnp.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("images contain NaN or infinite values")
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"float images must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return jnp.asarray(arr, jnp.float32)
