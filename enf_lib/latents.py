"""The latent point cloud ``z = {(p_i, c_i, sigma_i)}_{i=1..L}`` that conditions an ENF."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from enf_lib.geometry import BiInvariant

Array = jax.Array


@struct.dataclass
class Latents:
    """A latent point cloud (a pytree, so it passes through jit, grad, vmap and scan).

    Attributes:
      pose: ``(..., L, pose_dim)``; the first two entries are a position in ``[-1, 1]^2``.
      context: ``(..., L, latent_dim)`` feature vectors.
      window: ``(..., L, 1)`` width of each latent's Gaussian locality window.
    """

    pose: Array
    context: Array
    window: Array

    @property
    def num_latents(self) -> int:
        return self.pose.shape[-2]

    @property
    def position(self) -> Array:
        """``(..., L, 2)``: the planar position part of each pose."""
        return self.pose[..., :2]

    def transform(self, bi_invariant: BiInvariant, g: Array) -> "Latents":
        """``g z``: act with group element ``g`` on the poses; contexts and windows are unchanged."""
        return self.replace(pose=bi_invariant.act_on_poses(g, self.pose))


def grid_positions(num_latents: int) -> Array:
    """``(L, 2)`` positions of ``L`` latents spread evenly over ``[-1, 1]^2``.

    A perfect square ``L = n^2`` gives the centres of an ``n x n`` grid of cells. Otherwise the
    grid has ``rows = floor(sqrt(L))`` rows and the ``L`` latents are distributed over them as
    evenly as possible (row lengths differ by at most one); each row spaces its latents at cell
    centres. Nothing is dropped.
    """
    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    rows = math.isqrt(num_latents)
    base, extra = divmod(num_latents, rows)
    points = []
    for r in range(rows):
        cols = base + (1 if r < extra else 0)
        y = -1 + (2 * r + 1) / rows
        points += [(y, -1 + (2 * c + 1) / cols) for c in range(cols)]
    return jnp.asarray(points, dtype=jnp.float32)


def init_latents(
    key: Array,
    num_latents: int,
    latent_dim: int,
    bi_invariant: BiInvariant,
    *,
    noise: float | None = None,
) -> Latents:
    """Initial latents for one signal.

    Poses on :func:`grid_positions` plus Gaussian noise of scale ``noise`` (default
    ``0.1 / sqrt(L)``); for 3-D poses the orientation is uniform in ``[-pi, pi)``. Contexts are
    constant ``1 / latent_dim``; windows ``2 / sqrt(L)``, the grid spacing.

    Returns: :class:`Latents` with pose ``(L, pose_dim)``, context ``(L, latent_dim)``, window ``(L, 1)``.
    """
    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    noise = 0.1 / math.sqrt(num_latents) if noise is None else noise
    k_pos, k_theta = jax.random.split(key)
    pos = grid_positions(num_latents)
    pos = pos + noise * jax.random.normal(k_pos, pos.shape)
    if bi_invariant.pose_dim == 3:
        theta = jax.random.uniform(k_theta, (num_latents, 1), minval=-jnp.pi, maxval=jnp.pi)
        pose = jnp.concatenate([pos, theta], -1)
    elif bi_invariant.pose_dim == 2:
        pose = pos
    else:
        raise ValueError(f"unsupported pose_dim {bi_invariant.pose_dim}")
    return Latents(
        pose=pose,
        context=jnp.full((num_latents, latent_dim), 1.0 / latent_dim, jnp.float32),
        window=jnp.full((num_latents, 1), 2.0 / math.sqrt(num_latents), jnp.float32),
    )


def init_latents_batch(
    key: Array,
    batch_size: int,
    num_latents: int,
    latent_dim: int,
    bi_invariant: BiInvariant,
    *,
    noise: float | None = None,
) -> Latents:
    """:func:`init_latents` for ``batch_size`` signals, each with its own noise: leading axis ``B``."""
    keys = jax.random.split(key, batch_size)
    return jax.vmap(
        lambda k: init_latents(k, num_latents, latent_dim, bi_invariant, noise=noise)
    )(keys)


def latents_to_arrays(z: Latents, prefix: str = "") -> dict[str, np.ndarray]:
    """``{prefix + "pose": ..., prefix + "context": ..., prefix + "window": ...}`` as NumPy
    arrays (to save with ``np.savez``)."""
    return {f"{prefix}{name}": np.asarray(getattr(z, name)) for name in ("pose", "context", "window")}


def latents_from_arrays(arrays: dict[str, np.ndarray], prefix: str = "") -> Latents:
    """The inverse of :func:`latents_to_arrays`."""
    return Latents(*(np.asarray(arrays[f"{prefix}{name}"]) for name in ("pose", "context", "window")))


@struct.dataclass
class ContextStats:
    """Per-channel mean and standard deviation ``(latent_dim,)`` of the contexts of a data set.

    Downstream models see normalised contexts; compute the statistics on the training latents
    only and apply them to every split.
    """

    mean: Array
    std: Array

    @classmethod
    def from_latents(cls, z: Latents, eps: float = 1e-6) -> "ContextStats":
        """Statistics over every signal and latent of ``z`` (context ``(..., L, D)``)."""
        c = np.asarray(z.context).reshape(-1, z.context.shape[-1])
        if not np.all(np.isfinite(c)):
            raise ValueError("latent contexts contain NaN or infinite values")
        return cls(mean=jnp.asarray(c.mean(0)), std=jnp.asarray(c.std(0) + eps))

    def normalize(self, z: Latents) -> Latents:
        return z.replace(context=(z.context - self.mean) / self.std)

    def denormalize(self, z: Latents) -> Latents:
        return z.replace(context=z.context * self.std + self.mean)
