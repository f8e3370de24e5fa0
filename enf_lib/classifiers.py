"""Classifying signals from their latent point clouds.

Two transformers over the ``L`` latent tokens that differ only in how they see the poses:

* :class:`LatentTransformer` (``kind="transformer"``, as in the reference code) adds an embedding
  of each *absolute* pose to its token. Translating the latents changes its input, so it is not
  invariant.
* :class:`InvariantClassifier` (``kind="invariant"``) never sees a pose on its own: attention
  between latents ``i`` and ``j`` is biased by an embedding of the bi-invariant ``a(p_j, p_i)``
  (e.g. ``p_j - p_i`` for translations), and each message also carries the attention-weighted
  embeddings. Contexts are invariant too, so its prediction is exactly invariant to the group
  acting on the latents.

Both take contexts already normalised (:class:`~enf_lib.latents.ContextStats`).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic.dataclasses
from flax import nnx
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from enf_lib.batching import padded_batches
from enf_lib.config import STRICT
from enf_lib.geometry import BiInvariant, get_bi_invariant
from enf_lib.latents import Latents
from enf_lib.model import MLP, FourierEmbedding
from enf_lib.tracking import MetricLogger
from enf_lib.training import train_model

Array = jax.Array
Kind = Literal["transformer", "invariant"]
KINDS: tuple[str, ...] = get_args(Kind)


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class ClassifierConfig:
    """A latent classifier and its training.

    Attributes:
      dim: token width.
      depth: transformer blocks.
      num_heads: attention heads (``dim`` must be divisible by it).
      mlp_ratio: hidden width of each block's MLP, in multiples of ``dim``.
      num_freqs, freq: Fourier features of poses (transformer) or bi-invariants (invariant).
      pair_dim: width of the embedded pairwise invariants (invariant classifier).
      steps, batch_size, lr, weight_decay, warmup: AdamW with linear warm-up and cosine decay.
      label_smoothing: of the cross-entropy targets.
      augment_shift: if > 0, each training example's latents are translated by a random shift
        uniform in ``[-augment_shift, augment_shift]^2`` (coordinates span ``[-1, 1]``): data
        augmentation that teaches the non-invariant transformer what the invariant one knows.
    """

    dim: PositiveInt = 128
    depth: PositiveInt = 4
    num_heads: PositiveInt = 4
    mlp_ratio: PositiveInt = 2
    num_freqs: PositiveInt = 16
    freq: PositiveFloat = 2.0
    pair_dim: PositiveInt = 32
    steps: PositiveInt = 3000
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.05
    warmup: NonNegativeInt = 100
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    augment_shift: NonNegativeFloat = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")


def pairwise_invariants(bi: BiInvariant, pose: Array) -> Array:
    """``(..., L, pose_dim) -> (..., L, L, d)``: the bi-invariant between every pair of latents.

    Entry ``[i, j]`` describes latent ``j``'s position seen from latent ``i``'s pose, ``a(x_j,
    p_i)``; for SE(2) poses it also holds ``cos`` and ``sin`` of the relative orientation
    ``theta_j - theta_i``. Unchanged when the group acts on all poses at once.
    """
    if not bi.equivariant:
        raise ValueError(f"the {bi.name!r} bi-invariant is not invariant to any group: "
                         "an invariant classifier needs translation, distance or se2")
    a = bi(pose[..., None, :, :2], pose[..., :, None, :])
    if bi.pose_dim == 3:
        dtheta = pose[..., None, :, 2] - pose[..., :, None, 2]
        a = jnp.concatenate([a, jnp.cos(dtheta)[..., None], jnp.sin(dtheta)[..., None]], -1)
    return a


def pair_dim(bi: BiInvariant) -> int:
    """Entries of :func:`pairwise_invariants` for ``bi``."""
    return bi.dim + (2 if bi.pose_dim == 3 else 0)


class Block(nnx.Module):
    """Pre-norm transformer block over latent tokens ``(B, L, dim)``.

    With ``pair (B, L, L, P)`` (embedded pairwise invariants ``e_ij``), attention is relative
    (in the style of Shaw et al.): each head's logits get a learned bias ``b(e_ij)`` and its
    message a learned map ``r`` of the attention-weighted pair features,
    ``msg_i = sum_j w_ij v_j + r(sum_j w_ij e_ij)`` with ``w_ij = softmax_j(q_i . k_j / sqrt(d)
    + b(e_ij))``. Summing ``e_ij`` before projecting keeps the cost at ``O(L^2 P)`` per head.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, pair_dim: int | None, *,
                 rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)
        self.mlp = MLP(dim, mlp_ratio * dim, dim, 1, rngs=rngs)
        if pair_dim is None:
            self.bias = self.relative = None
        else:
            self.bias = nnx.Linear(pair_dim, num_heads, rngs=rngs)
            init = nnx.initializers.lecun_normal()
            self.relative = nnx.Param(init(rngs.params(), (num_heads, pair_dim,
                                                           dim // num_heads)))

    def __call__(self, h: Array, pair: Array | None = None) -> Array:
        b, n, d = h.shape
        heads = lambda x: x.reshape(b, n, self.num_heads, d // self.num_heads)
        q, k, v = map(heads, jnp.split(self.qkv(self.norm1(h)), 3, -1))
        logits = jnp.einsum("bihc,bjhc->bhij", q, k) / jnp.sqrt(d // self.num_heads)
        if self.bias is not None:
            logits = logits + jnp.moveaxis(self.bias(pair), -1, 1)            # (B, H, L, L)
        w = jax.nn.softmax(logits, -1)
        msg = jnp.einsum("bhij,bjhc->bihc", w, v)
        if self.relative is not None:
            r = jnp.einsum("bhij,bijp->bihp", w, pair)                        # (B, L, H, P)
            msg = msg + jnp.einsum("bihp,hpc->bihc", r, self.relative[...])
        h = h + self.out(msg.reshape(b, n, d))
        return h + self.mlp(self.norm2(h))


class _LatentClassifier(nnx.Module):
    """Shared parts: context embedding, blocks, mean pooling, linear head."""

    def __init__(self, latent_dim: int, num_classes: int, cfg: ClassifierConfig,
                 pair_dim: int | None, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(latent_dim, cfg.dim, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, pair_dim, rngs=rngs)
                                for _ in range(cfg.depth)])
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.head = nnx.Linear(cfg.dim, num_classes, rngs=rngs)

    def _classify(self, h: Array, pair: Array | None) -> Array:
        for block in self.blocks:
            h = block(h, pair)
        return self.head(self.norm(h.mean(1)))


class LatentTransformer(_LatentClassifier):
    """``Latents (B, L, ...) -> logits (B, num_classes)``; tokens ``W c_i + F(p_i)`` with the
    absolute pose ``p_i`` embedded by Fourier features ``F``: not invariant."""

    def __init__(self, latent_dim: int, pose_dim: int, num_classes: int, cfg: ClassifierConfig,
                 *, rngs: nnx.Rngs):
        super().__init__(latent_dim, num_classes, cfg, pair_dim=None, rngs=rngs)
        self.pose_embed = FourierEmbedding(pose_dim, cfg.num_freqs, cfg.dim, cfg.freq, rngs=rngs)

    def __call__(self, z: Latents) -> Array:
        return self._classify(self.embed(z.context) + self.pose_embed(z.pose), None)


class InvariantClassifier(_LatentClassifier):
    """``Latents (B, L, ...) -> logits (B, num_classes)`` that depends on poses only through
    :func:`pairwise_invariants`: exactly invariant to the bi-invariant's group."""

    def __init__(self, latent_dim: int, bi_invariant: str | BiInvariant, num_classes: int,
                 cfg: ClassifierConfig, *, rngs: nnx.Rngs):
        super().__init__(latent_dim, num_classes, cfg, pair_dim=cfg.pair_dim, rngs=rngs)
        self.bi = get_bi_invariant(bi_invariant)
        if not self.bi.equivariant:
            raise ValueError(f"the {self.bi.name!r} bi-invariant is not invariant to any group: "
                             "an invariant classifier needs translation, distance or se2")
        self.pair_embed = FourierEmbedding(pair_dim(self.bi), cfg.num_freqs, cfg.pair_dim,
                                           cfg.freq, rngs=rngs)

    def __call__(self, z: Latents) -> Array:
        pair = jax.nn.gelu(self.pair_embed(pairwise_invariants(self.bi, z.pose)))
        return self._classify(self.embed(z.context), pair)


def make_classifier(kind: str, *, latent_dim: int, bi_invariant: str, num_classes: int,
                    cfg: ClassifierConfig, rngs: nnx.Rngs) -> nnx.Module:
    """A :class:`LatentTransformer` (``kind="transformer"``) or :class:`InvariantClassifier`
    (``kind="invariant"``) for latents of the given bi-invariant's poses."""
    if kind == "transformer":
        return LatentTransformer(latent_dim, get_bi_invariant(bi_invariant).pose_dim,
                                 num_classes, cfg, rngs=rngs)
    if kind == "invariant":
        return InvariantClassifier(latent_dim, bi_invariant, num_classes, cfg, rngs=rngs)
    raise ValueError(f"unknown classifier kind {kind!r}; choose one of {KINDS}")


def _check_latents(latents: Latents, labels: np.ndarray | None = None) -> None:
    n = latents.context.shape[0]
    if latents.context.ndim != 3:
        raise ValueError(f"expected latents with a batch axis, context (N, L, D); got "
                         f"{latents.context.shape}")
    if not np.all(np.isfinite(np.asarray(latents.context))):
        raise ValueError("latent contexts contain NaN or infinite values")
    if labels is not None and np.shape(labels) != (n,):
        raise ValueError(f"labels must have shape ({n},), got {np.shape(labels)}")


def train_classifier(model: nnx.Module, latents: Latents, labels: np.ndarray,
                     cfg: ClassifierConfig, key: Array, *, num_classes: int,
                     **train_kwargs: Any) -> tuple[nnx.Module, MetricLogger]:
    """Train ``model`` on ``latents (N, L, ...)`` and integer ``labels (N,)`` with label-smoothed
    cross-entropy and AdamW (``train_kwargs`` go to :func:`~enf_lib.training.train_model`,
    e.g. ``checkpoint_dir``). Returns the trained model and its training log."""
    _check_latents(latents, labels)
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")

    def loss_fn(m: nnx.Module, batch: dict[str, Array], k: Array
                ) -> tuple[Array, dict[str, Array]]:
        z = Latents(batch["pose"], batch["context"], batch["window"])
        if cfg.augment_shift > 0:
            shift = jax.random.uniform(k, (z.pose.shape[0], 1, 2), minval=-cfg.augment_shift,
                                       maxval=cfg.augment_shift)
            z = z.replace(pose=z.pose.at[..., :2].add(shift))
        logits = m(z)
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                      cfg.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, cfg.steps - 1),
                                                  cfg.steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=cfg.weight_decay))
    data = {"pose": latents.pose, "context": latents.context, "window": latents.window,
            "label": labels.astype(np.int32)}
    return train_model(model, loss_fn, data, steps=cfg.steps, batch_size=cfg.batch_size,
                       optimizer=optimizer, key=key, **train_kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef: nnx.GraphDef, state: nnx.State, z: Latents) -> Array:
    return nnx.merge(graphdef, state)(z)


def predict(model: nnx.Module, latents: Latents, batch_size: int = 512) -> np.ndarray:
    """Logits ``(N, num_classes)`` for ``latents (N, L, ...)``, in padded chunks (one compile)."""
    _check_latents(latents)
    graphdef, state = nnx.split(model)
    out = [np.asarray(_logits(graphdef, state, z))[:n]
           for z, n in padded_batches(jax.tree.map(np.asarray, latents), batch_size)]
    return np.concatenate(out)
