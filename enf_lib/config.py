"""Configurations: the decoder (:class:`ENFConfig`) and its meta-learning (:class:`FitConfig`).

Both are frozen dataclasses, validated on construction (a bad value raises ``ValueError`` naming
the field), hashable (so they can be static arguments of ``jax.jit``), and easy to vary with
``dataclasses.replace(cfg, field=value)``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from enf_lib.geometry import BI_INVARIANTS


def _check(cond: bool, field: str, value: Any, rule: str) -> None:
    if not cond:
        raise ValueError(f"invalid config: {field}={value!r} ({rule})")


@dataclasses.dataclass(frozen=True)
class ENFConfig:
    """The equivariant neural field decoder.

    Attributes:
      num_out: output channels (3 for RGB).
      num_latents: latents ``L`` per signal.
      latent_dim: entries of each context vector.
      hidden_dim: width of embeddings, value MLP and output head.
      att_dim: per-head dimension of queries and keys.
      value_dim: per-head dimension of the values; ``None`` = ``att_dim``. The minimal reference
        code uses ``hidden_dim``; ``att_dim`` learns as much per meta-step at the reference
        config (measured) with 11 % fewer FLOPs.
      num_heads: attention heads.
      k_nearest: each coordinate attends to its ``k`` nearest latents; ``None`` attends to all
        (the dense variant).
      freq_query, freq_value: standard deviation of the Fourier-feature frequencies of the query
        and value embeddings of the bi-invariant.
      num_freqs: Fourier frequencies per embedding.
      head_depth: hidden layers of the output head (0 = a single linear layer, as in the
        minimal reference code; a GELU layer starts the 3-step fit off worse and learned no
        more per meta-step in our measurements).
      attention_scale: factor on the query-key logits ``q . k`` before the Gaussian window is
        subtracted. 1 (no scaling) as in the minimal reference code; transformers use
        ``1 / sqrt(att_dim)``. It sets how strongly the contexts steer the attention, and so
        how much one inner step on the contexts changes it: retune the inner rates with it.
      bi_invariant: ``absolute``, ``translation``, ``distance`` or ``se2``.
    """

    num_out: int = 3
    num_latents: int = 16
    latent_dim: int = 64
    hidden_dim: int = 128
    att_dim: int = 64
    value_dim: int | None = None
    num_heads: int = 3
    k_nearest: int | None = 4
    freq_query: float = 3.0
    freq_value: float = 5.0
    num_freqs: int = 64
    head_depth: int = 0
    attention_scale: float = 1.0
    bi_invariant: str = "translation"

    def __post_init__(self) -> None:
        for name in ("num_out", "num_latents", "latent_dim", "hidden_dim", "att_dim", "num_heads"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, value, "a positive integer")
        _check(self.value_dim is None or (isinstance(self.value_dim, int) and self.value_dim >= 1),
               "value_dim", self.value_dim, "None or a positive integer")
        k = self.k_nearest
        _check(k is None or (isinstance(k, int) and 1 <= k <= self.num_latents),
               "k_nearest", k, f"None or an integer in [1, num_latents={self.num_latents}]")
        _check(self.freq_query > 0 and self.freq_value > 0, "freq_query/freq_value",
               (self.freq_query, self.freq_value), "positive")
        _check(self.num_freqs >= 1, "num_freqs", self.num_freqs, ">= 1")
        _check(self.head_depth >= 0, "head_depth", self.head_depth, ">= 0")
        _check(self.attention_scale > 0, "attention_scale", self.attention_scale, "> 0")
        _check(self.bi_invariant in BI_INVARIANTS, "bi_invariant", self.bi_invariant,
               f"one of {sorted(BI_INVARIANTS)}")

    @property
    def head_value_dim(self) -> int:
        """Entries of each head's value (``value_dim``, else ``att_dim``)."""
        return self.att_dim if self.value_dim is None else self.value_dim

    @property
    def neighbours(self) -> int:
        """How many latents each coordinate attends to."""
        return self.num_latents if self.k_nearest is None else self.k_nearest


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Fitting latents (the inner loop) and meta-learning the decoder (the outer loop).

    Attributes:
      inner_steps: gradient steps on the latents per signal.
      lr_pose, lr_context, lr_window: inner learning rates per latent component; a component
        with rate 0 is never adapted (also not by Meta-SGD).
      meta_sgd: learn one inner rate per latent entry (Meta-SGD), initialised at the rates above.
      meta_sgd_lr: Adam learning rate of the Meta-SGD rates, which are learned as log-rates: an
        Adam step changes a rate by about this fraction whatever its size.
      meta_sgd_clip: the learned rates are kept in this range (``0 < low < high``).
      second_order: differentiate through the inner gradients (MAML); else first-order.
      inner_coords: coordinates sampled at random for each inner step (``None`` = all).
      outer_coords: coordinates sampled for the outer loss (``None`` = all).
      batch_size: signals per outer step.
      outer_lr: Adam learning rate of the decoder.
      grad_clip: global-norm clipping of the outer gradient (``None`` = off).
    """

    inner_steps: int = 3
    lr_pose: float = 2.0
    lr_context: float = 30.0
    lr_window: float = 0.0
    meta_sgd: bool = False
    meta_sgd_lr: float = 1e-2
    meta_sgd_clip: tuple[float, float] = (1e-6, 1e3)
    second_order: bool = True
    inner_coords: int | None = None
    outer_coords: int | None = None
    batch_size: int = 32
    outer_lr: float = 5e-4
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        _check(self.inner_steps >= 1, "inner_steps", self.inner_steps, ">= 1")
        for name in ("lr_pose", "lr_context", "lr_window"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        lo, hi = self.meta_sgd_clip
        _check(0 < lo < hi, "meta_sgd_clip", self.meta_sgd_clip, "0 < low < high")
        _check(self.meta_sgd_lr > 0, "meta_sgd_lr", self.meta_sgd_lr, "> 0")
        for name in ("inner_coords", "outer_coords"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, "None or >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.outer_lr > 0, "outer_lr", self.outer_lr, "> 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "None or > 0")


PROFILES = ("quick", "standard", "full")


def profile_from_env(default: str = "quick") -> str:
    """The run profile: the ``ENF_PROFILE`` environment variable, else ``default``."""
    profile = os.environ.get("ENF_PROFILE", default)
    if profile not in PROFILES:
        raise ValueError(f"ENF_PROFILE={profile!r}; choose one of {PROFILES}")
    return profile
