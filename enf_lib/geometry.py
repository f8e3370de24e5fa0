"""Bi-invariants: how the decoder sees a coordinate ``x`` relative to a latent pose ``p``.

A bi-invariant ``a(x, p)`` satisfies ``a(g x, g p) = a(x, p)`` for every element ``g`` of its
group. Because the ENF decoder sees coordinates and poses only through ``a``, it is steerable:
``f(g x; g z) = f(x; z)``, where ``g z`` moves the latent poses and leaves contexts and windows alone.

Every bi-invariant here also knows its group, so tests and notebooks can act with a group element
on coordinates and on poses and check the claim numerically.

Shapes: coordinates ``x`` are ``(..., 2)``, poses ``p`` are ``(..., pose_dim)``; the first two
pose entries are always a position in the plane, so k-nearest-latent search and the Gaussian
window use ``p[..., :2]`` whatever the group.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array


def rotation_matrix(theta: Array) -> Array:
    """``(...,) -> (..., 2, 2)``: counter-clockwise rotation by ``theta`` radians."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def _rotate(theta: Array, v: Array) -> Array:
    """Rotate vectors ``v (..., 2)`` by ``theta`` (scalar or broadcastable to ``v[..., 0]``)."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


@dataclasses.dataclass(frozen=True)
class BiInvariant:
    """Base class. Subclasses set ``name``, ``pose_dim``, ``dim`` and ``group_dim``.

    Attributes:
      name: registry name, e.g. ``"se2"``.
      pose_dim: entries of one latent pose.
      dim: entries of ``a(x, p)``.
      group_dim: entries of one group element ``g`` (as sampled by :meth:`random_element`).
      equivariant: whether ``a`` is really invariant under its group (False for the baseline).
    """

    name: ClassVar[str]
    pose_dim: ClassVar[int]
    dim: ClassVar[int]
    group_dim: ClassVar[int]
    equivariant: ClassVar[bool] = True

    def __call__(self, x: Array, p: Array) -> Array:
        """``x (..., 2)``, ``p (..., pose_dim)`` -> ``a (..., dim)`` (broadcasting)."""
        raise NotImplementedError

    def act_on_coords(self, g: Array, x: Array) -> Array:
        """Apply group element ``g (group_dim,)`` to coordinates ``x (..., 2)``."""
        raise NotImplementedError

    def act_on_poses(self, g: Array, p: Array) -> Array:
        """Apply group element ``g (group_dim,)`` to poses ``p (..., pose_dim)``."""
        raise NotImplementedError

    def random_element(self, key: Array, max_shift: float = 0.5) -> Array:
        """A random group element ``(group_dim,)``: shifts uniform in ``[-max_shift, max_shift]``,
        angles uniform in ``[-pi, pi)``."""
        k_t, k_r = jax.random.split(key)
        t = jax.random.uniform(k_t, (2,), minval=-max_shift, maxval=max_shift)
        if self.group_dim == 2:
            return t
        theta = jax.random.uniform(k_r, (1,), minval=-jnp.pi, maxval=jnp.pi)
        return jnp.concatenate([t, theta])

    def random_poses(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Random poses ``shape + (pose_dim,)``: positions in ``[-1, 1]^2``, angles in ``[-pi, pi)``."""
        k_x, k_t = jax.random.split(key)
        xy = jax.random.uniform(k_x, shape + (2,), minval=-1.0, maxval=1.0)
        if self.pose_dim == 2:
            return xy
        theta = jax.random.uniform(k_t, shape + (1,), minval=-jnp.pi, maxval=jnp.pi)
        return jnp.concatenate([xy, theta], -1)


class _TranslationGroup:
    """Translations of the plane, ``g = (tx, ty)``."""

    group_dim: ClassVar[int] = 2

    def act_on_coords(self, g: Array, x: Array) -> Array:
        return x + g

    def act_on_poses(self, g: Array, p: Array) -> Array:
        return p + g


class _RotoTranslationGroup:
    """SE(2), ``g = (tx, ty, phi)`` acting as ``x -> R(phi) x + t``.

    On 2-D poses (positions) it acts the same way; on 3-D poses ``(x, y, theta)`` it also adds
    ``phi`` to the orientation.
    """

    group_dim: ClassVar[int] = 3

    def act_on_coords(self, g: Array, x: Array) -> Array:
        return _rotate(g[2], x) + g[:2]

    def act_on_poses(self, g: Array, p: Array) -> Array:
        xy = _rotate(g[2], p[..., :2]) + g[:2]
        if p.shape[-1] == 2:
            return xy
        return jnp.concatenate([xy, p[..., 2:3] + g[2]], -1)


@dataclasses.dataclass(frozen=True)
class AbsolutePosition(_TranslationGroup, BiInvariant):
    """``a(x, p) = x``: the non-equivariant baseline. The pose still sets the k-NN neighbourhood and
    the window, but what the decoder computes depends on where ``x`` is, so translating signal and
    latents together changes the output."""

    name: ClassVar[str] = "absolute"
    pose_dim: ClassVar[int] = 2
    dim: ClassVar[int] = 2
    equivariant: ClassVar[bool] = False

    def __call__(self, x: Array, p: Array) -> Array:
        return jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, p.shape))


@dataclasses.dataclass(frozen=True)
class Translation(_TranslationGroup, BiInvariant):
    """``a(x, p) = x - p``: invariant to translations of the plane."""

    name: ClassVar[str] = "translation"
    pose_dim: ClassVar[int] = 2
    dim: ClassVar[int] = 2

    def __call__(self, x: Array, p: Array) -> Array:
        return x - p


@dataclasses.dataclass(frozen=True)
class Distance(_RotoTranslationGroup, BiInvariant):
    """``a(x, p) = ||x - p||``: invariant to rotations and translations, but blind to direction."""

    name: ClassVar[str] = "distance"
    pose_dim: ClassVar[int] = 2
    dim: ClassVar[int] = 1

    def __call__(self, x: Array, p: Array) -> Array:
        # The epsilon keeps the gradient finite when x sits exactly on a pose.
        return jnp.sqrt(jnp.sum(jnp.square(x - p), -1, keepdims=True) + 1e-12)


@dataclasses.dataclass(frozen=True)
class SE2(_RotoTranslationGroup, BiInvariant):
    """``a(x, p) = R(theta)^T (x - p_xy)`` for poses ``p = (x, y, theta)``: the offset of ``x`` in the
    latent's own frame. Invariant to roto-translations and, unlike :class:`Distance`, keeps direction."""

    name: ClassVar[str] = "se2"
    pose_dim: ClassVar[int] = 3
    dim: ClassVar[int] = 2

    def __call__(self, x: Array, p: Array) -> Array:
        # p[..., 2] (not p[..., 2:]) so theta broadcasts like one entry of the offset.
        return _rotate(-p[..., 2], x - p[..., :2])


BI_INVARIANTS: dict[str, type[BiInvariant]] = {
    cls.name: cls for cls in (AbsolutePosition, Translation, Distance, SE2)
}


def get_bi_invariant(name: str | BiInvariant) -> BiInvariant:
    """Look up a bi-invariant by name (``absolute``, ``translation``, ``distance``, ``se2``)."""
    if isinstance(name, BiInvariant):
        return name
    try:
        return BI_INVARIANTS[name]()
    except KeyError:
        raise ValueError(
            f"unknown bi-invariant {name!r}; choose one of {sorted(BI_INVARIANTS)}"
        ) from None
