"""Generating latents by flow matching with a diffusion transformer (DiT, adaLN-Zero).

The data are sets of ``L`` tokens ``x1 (B, L, D)`` (one per latent: its normalised context,
optionally with its pose), conditioned on a class label and on fixed token poses
``(B, L, pose_dim)`` that tell the transformer where each token sits.

* **Flow matching** (rectified flow): ``x_t = (1 - t) eps + t x1`` with ``eps ~ N(0, I)``
  moves noise (``t = 0``) to data (``t = 1``) along straight lines; the network regresses the
  constant velocity ``x1 - eps`` at ``t ~ logit-normal(0, 1)``.
* **Classifier-free guidance** (CFG): labels are replaced by a "null" class with probability
  ``label_dropout`` during training, so one network gives both the conditional velocity
  ``v_c`` and the unconditional ``v_u``; sampling follows ``v_u + w (v_c - v_u)``.
* **Sampling** integrates ``dx/dt = v`` from ``t = 0`` to ``1`` with Euler or Heun steps in a
  ``lax.fori_loop`` whose step count and guidance scale are traced values: one compilation
  serves every step count and scale.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import pydantic.dataclasses
from flax import nnx
from pydantic import PositiveInt

from enf_lib.config import STRICT

Array = jax.Array

Method = Literal["euler", "heun"]
METHODS: tuple[str, ...] = get_args(Method)
"""Samplers of :func:`sample`."""


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class DiTConfig:
    """A diffusion transformer over latent tokens.

    Attributes:
      token_dim: entries ``D`` of each token (what is generated).
      pose_dim: entries of each token's conditioning pose.
      num_classes: class labels ``0..num_classes-1``; label ``num_classes`` is the null class.
      width: the transformer's hidden size.
      depth: number of adaLN-Zero blocks.
      num_heads: attention heads (``width`` must be divisible by it).
      mlp_ratio: hidden size of each block's MLP, as a multiple of ``width``.
      pose_freqs: Fourier frequencies per pose entry (octaves ``2^0 .. 2^(n-1)`` times pi).
    """

    token_dim: PositiveInt = 16
    pose_dim: PositiveInt = 2
    num_classes: PositiveInt = 10
    width: PositiveInt = 256
    depth: PositiveInt = 6
    num_heads: PositiveInt = 4
    mlp_ratio: PositiveInt = 4
    pose_freqs: PositiveInt = 8

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")


# ------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------


def timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Sinusoidal embedding ``(B,) -> (B, dim)`` of times ``t`` in ``[0, 1]`` (scaled by 1000,
    as for discrete diffusion steps)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t[:, None].astype(jnp.float32) * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def pose_features(poses: Array, num_freqs: int) -> Array:
    """Fourier features ``(..., P) -> (..., P (1 + 2 num_freqs))`` of poses in ``[-1, 1]``:
    the pose, and ``sin, cos`` of ``2^k pi p`` for ``k < num_freqs``."""
    scales = jnp.pi * 2.0 ** jnp.arange(num_freqs, dtype=jnp.float32)
    proj = (poses[..., None] * scales).reshape(*poses.shape[:-1], -1)
    return jnp.concatenate([poses, jnp.sin(proj), jnp.cos(proj)], -1)


def _zeros_linear(in_dim: int, out_dim: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_dim, out_dim, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation ``x (B, L, W)`` by per-sample ``shift, scale (B, W)``."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


# ------------------------------------------------------------------------------------------
# The transformer
# ------------------------------------------------------------------------------------------


class DiTBlock(nnx.Module):
    """Self-attention and MLP, each ``x + gate * f(modulate(norm(x), shift, scale))`` with
    ``shift, scale, gate`` regressed from the conditioning vector by a zero-initialised layer
    (adaLN-Zero): at initialisation every gate is 0 and the block is the identity."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, use_scale=False, use_bias=False, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads, width, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, use_scale=False, use_bias=False, rngs=rngs)
        self.mlp_in = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_ratio * width, width, rngs=rngs)
        self.ada = _zeros_linear(width, 6 * width, rngs)

    def __call__(self, x: Array, cond: Array) -> Array:
        """``x (B, L, W)``, ``cond (B, W)`` -> ``(B, L, W)``."""
        s1, sc1, g1, s2, sc2, g2 = jnp.split(self.ada(nnx.silu(cond)), 6, axis=-1)
        h = modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None] * self.attn(h)
        h = modulate(self.norm2(x), s2, sc2)
        return x + g2[:, None] * self.mlp_out(nnx.gelu(self.mlp_in(h)))


class DiT(nnx.Module):
    """Velocity network ``v(x_t, t, label, poses)`` over a set of latent tokens.

    Each token is embedded as ``Linear(x_t) + Linear(Fourier(pose))``; the conditioning vector
    is ``MLP(sinusoidal(t)) + Embed(label)`` (label ``num_classes`` = null); ``depth``
    adaLN-Zero blocks; a final adaLN and a zero-initialised linear layer (so the initial
    velocity is 0).
    """

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.width
        self.token_in = nnx.Linear(cfg.token_dim, w, rngs=rngs)
        self.pose_in = nnx.Linear(cfg.pose_dim * (1 + 2 * cfg.pose_freqs), w, rngs=rngs)
        self.time_mlp = nnx.Sequential(nnx.Linear(w, w, rngs=rngs), nnx.silu,
                                       nnx.Linear(w, w, rngs=rngs))
        self.label_embed = nnx.Embed(cfg.num_classes + 1, w, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(w, cfg.num_heads, cfg.mlp_ratio, rngs=rngs)
                                for _ in range(cfg.depth)])
        self.norm_out = nnx.LayerNorm(w, use_scale=False, use_bias=False, rngs=rngs)
        self.ada_out = _zeros_linear(w, 2 * w, rngs)
        self.out = _zeros_linear(w, cfg.token_dim, rngs)

    @property
    def null_label(self) -> int:
        return self.cfg.num_classes

    def __call__(self, x: Array, t: Array, labels: Array, poses: Array) -> Array:
        """Velocity ``(B, L, D)`` at ``x (B, L, D)``, times ``t (B,)``, labels ``(B,)`` (int, the
        null class allowed) and token poses ``(B, L, pose_dim)``."""
        h = self.token_in(x) + self.pose_in(pose_features(poses, self.cfg.pose_freqs))
        cond = self.time_mlp(timestep_embedding(t, self.cfg.width)) + self.label_embed(labels)
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = jnp.split(self.ada_out(nnx.silu(cond)), 2, axis=-1)
        return self.out(modulate(self.norm_out(h), shift, scale))


# ------------------------------------------------------------------------------------------
# Flow matching
# ------------------------------------------------------------------------------------------


def sample_time(key: Array, shape: tuple[int, ...], mean: float = 0.0,
                std: float = 1.0) -> Array:
    """Times ``t = sigmoid(n)``, ``n ~ N(mean, std^2)`` (logit-normal): most weight on the
    middle of the path, where the velocity is hardest to predict."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape))


def interpolate(x0: Array, x1: Array, t: Array) -> Array:
    """The straight path ``x_t = (1 - t) x0 + t x1`` for per-sample ``t (B,)``."""
    t = t.reshape(-1, *([1] * (x1.ndim - 1)))
    return (1.0 - t) * x0 + t * x1


def drop_labels(key: Array, labels: Array, p: float, null_label: int) -> Array:
    """``labels (B,)`` with each replaced by ``null_label`` with probability ``p``."""
    return jnp.where(jax.random.bernoulli(key, p, labels.shape), null_label, labels)


def flow_matching_loss(model: DiT, x1: Array, labels: Array, poses: Array, key: Array, *,
                       label_dropout: float = 0.1) -> tuple[Array, dict[str, Array]]:
    """Mean squared error between ``model``'s velocity and ``x1 - eps`` on the path
    ``x_t = (1 - t) eps + t x1`` at logit-normal times.

    Args:
      x1: data tokens ``(B, L, D)``; labels ``(B,)``; poses ``(B, L, pose_dim)``.
      label_dropout: probability of training a sample as unconditional (for CFG).

    Returns: the loss and ``{"loss_t<0.5": ..., "loss_t>0.5": ...}``, the error on each half
    of the path (NaN for a half without samples in the batch).
    """
    k_eps, k_t, k_drop = jax.random.split(key, 3)
    eps = jax.random.normal(k_eps, x1.shape)
    t = sample_time(k_t, x1.shape[:1])
    labels = drop_labels(k_drop, labels, label_dropout, model.null_label)
    v = model(interpolate(eps, x1, t), t, labels, poses)
    err = jnp.mean(jnp.square(v - (x1 - eps)), axis=tuple(range(1, x1.ndim)))
    early = t < 0.5
    halves = {"loss_t<0.5": jnp.sum(err * early) / jnp.sum(early),
              "loss_t>0.5": jnp.sum(err * ~early) / jnp.sum(~early)}
    return jnp.mean(err), halves


def flow_matching_loss_fn(label_dropout: float):
    """A ``loss_fn(model, batch, key)`` for :func:`enf_lib.training.train_model` on a batch
    with ``"tokens" (B, L, D)``, ``"labels" (B,)`` and ``"poses" (B, L, pose_dim)``."""
    def loss_fn(model: DiT, batch: dict[str, Array], key: Array):
        return flow_matching_loss(model, batch["tokens"], batch["labels"], batch["poses"], key,
                                  label_dropout=label_dropout)
    return loss_fn


def guided_velocity(model: DiT, x: Array, t: Array, labels: Array, poses: Array,
                    guidance_scale: Array | float) -> Array:
    """``v_u + w (v_c - v_u)``: the conditional and unconditional velocities, evaluated as one
    batch of ``2 B``. ``w = 1`` is the conditional velocity, ``w = 0`` the unconditional."""
    b = x.shape[0]
    null = jnp.full_like(labels, model.null_label)
    v = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
              jnp.concatenate([labels, null]), jnp.concatenate([poses, poses]))
    v_c, v_u = v[:b], v[b:]
    return v_u + guidance_scale * (v_c - v_u)


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


def _integrate(graphdef: nnx.GraphDef, state: nnx.State, x0: Array, labels: Array,
               poses: Array, num_steps: Array, guidance_scale: Array, method: str,
               snapshots: int) -> tuple[Array, Array]:
    model = nnx.merge(graphdef, state)
    dt = 1.0 / num_steps.astype(jnp.float32)
    b = x0.shape[0]

    def velocity(x: Array, t: Array) -> Array:
        return guided_velocity(model, x, jnp.full((b,), t), labels, poses, guidance_scale)

    def step(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        x, traj = carry
        t = i.astype(jnp.float32) * dt
        v = velocity(x, t)
        if method == "heun":
            v = 0.5 * (v + velocity(x + dt * v, t + dt))
        x = x + dt * v
        if snapshots:
            # Slot k keeps the last state at or before t = k / (snapshots - 1); slot 0 the noise.
            slot = -((-(i + 1) * (snapshots - 1)) // num_steps)            # ceil division
            traj = jax.lax.dynamic_update_index_in_dim(traj, x, slot, 0)
        return x, traj

    traj = jnp.zeros((snapshots, *x0.shape), x0.dtype).at[0].set(x0) if snapshots else \
        jnp.zeros((0, *x0.shape), x0.dtype)
    return jax.lax.fori_loop(0, num_steps, step, (x0, traj))


_integrate_jit = jax.jit(_integrate, static_argnames=("graphdef", "method", "snapshots"))


def sample(model: DiT, key: Array, labels: Array | np.ndarray, poses: Array | np.ndarray, *,
           num_steps: int, guidance_scale: float = 1.0, method: str = "euler",
           snapshots: int = 0) -> Array | tuple[Array, Array]:
    """Integrate ``dx/dt = v`` from Gaussian noise at ``t = 0`` to data at ``t = 1``.

    Args:
      model: a trained :class:`DiT`.
      labels: ``(B,)`` classes in ``[0, num_classes)``.
      poses: token poses ``(L, pose_dim)`` (shared) or ``(B, L, pose_dim)``.
      num_steps: integration steps (traced: changing it does not recompile).
      guidance_scale: CFG scale ``w`` (traced); 1 = conditional, 0 = unconditional.
      method: ``"euler"`` (one velocity per step) or ``"heun"`` (two, second order).
      snapshots: also return the states at ``snapshots`` evenly spaced times, noise and final
        sample included (``0`` = none), recorded inside the loop.

    Returns: tokens ``(B, L, token_dim)``, and with ``snapshots`` the trajectory
    ``(snapshots, B, L, token_dim)``.
    """
    cfg = model.cfg
    labels = np.asarray(labels)
    poses = np.asarray(poses, np.float32)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= cfg.num_classes:
        raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got "
                         f"[{labels.min() if labels.size else '-'}, "
                         f"{labels.max() if labels.size else '-'}]")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
            or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not np.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    if snapshots == 1 or snapshots < 0:
        raise ValueError(f"snapshots must be 0 or >= 2, got {snapshots}")
    if poses.ndim == 2:
        poses = np.broadcast_to(poses, (labels.shape[0], *poses.shape))
    if poses.ndim != 3 or poses.shape[0] != labels.shape[0] or poses.shape[2] != cfg.pose_dim:
        raise ValueError(f"poses must be (L, {cfg.pose_dim}) or ({labels.shape[0]}, L, "
                         f"{cfg.pose_dim}), got {poses.shape}")
    if not np.all(np.isfinite(poses)):
        raise ValueError("poses contain NaN or infinite values")
    x0 = jax.random.normal(key, (labels.shape[0], poses.shape[1], cfg.token_dim))
    graphdef, state = nnx.split(model)
    x, traj = _integrate_jit(graphdef, state, x0, jnp.asarray(labels, jnp.int32),
                             jnp.asarray(poses), jnp.int32(num_steps),
                             jnp.float32(guidance_scale), method, snapshots)
    return (x, traj) if snapshots else x


def compile_count() -> int:
    """How many versions of the jitted sampler have been compiled in this process."""
    return _integrate_jit._cache_size()


def check_tokens(tokens: Any, name: str = "tokens") -> np.ndarray:
    """``tokens`` as float32 ``(N, L, D)``; ``ValueError`` for another rank or non-finite
    values."""
    arr = np.asarray(tokens, np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, L, D), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr
