"""Configurations: the decoder (:class:`ENFConfig`) and its meta-learning (:class:`FitConfig`).

Every config of the library is a frozen pydantic dataclass with the settings :data:`STRICT`: the
type and range of each field are validated once, on construction (``dataclasses.replace``
included), without coercion: ``2.5`` and ``True`` are not ints, ``1`` is not a bool, a list is
not a tuple, an int is accepted for a float (stored as a float), floats must be finite and
unknown fields are refused. A bad value raises pydantic's ``ValidationError``, a ``ValueError``
that names the field; rules between fields are checked in ``__post_init__``. Configs are still
plain dataclasses: hashable (so they can be static arguments of ``jax.jit``), and
``dataclasses.replace``, ``fields`` and ``asdict`` work on them.
"""

from __future__ import annotations

import os
from typing import Annotated

import pydantic.dataclasses
from pydantic import (AfterValidator, ConfigDict, NonNegativeFloat, NonNegativeInt,
                      PositiveFloat, PositiveInt)

from enf_lib.geometry import get_bi_invariant

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
"""Pydantic settings of every config dataclass (see the module docstring)."""


def _known_bi_invariant(name: str) -> str:
    get_bi_invariant(name)                  # ValueError listing the choices
    return name


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
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
      k_nearest: each coordinate attends to its ``k`` nearest latents (at most ``num_latents``);
        ``None`` attends to all (the dense variant).
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

    num_out: PositiveInt = 3
    num_latents: PositiveInt = 16
    latent_dim: PositiveInt = 64
    hidden_dim: PositiveInt = 128
    att_dim: PositiveInt = 64
    value_dim: PositiveInt | None = None
    num_heads: PositiveInt = 3
    k_nearest: PositiveInt | None = 4
    freq_query: PositiveFloat = 3.0
    freq_value: PositiveFloat = 5.0
    num_freqs: PositiveInt = 64
    head_depth: NonNegativeInt = 0
    attention_scale: PositiveFloat = 1.0
    bi_invariant: Annotated[str, AfterValidator(_known_bi_invariant)] = "translation"

    def __post_init__(self) -> None:
        if self.k_nearest is not None and self.k_nearest > self.num_latents:
            raise ValueError(f"k_nearest={self.k_nearest} exceeds num_latents={self.num_latents}")

    @property
    def head_value_dim(self) -> int:
        """Entries of each head's value (``value_dim``, else ``att_dim``)."""
        return self.att_dim if self.value_dim is None else self.value_dim

    @property
    def neighbours(self) -> int:
        """How many latents each coordinate attends to."""
        return self.num_latents if self.k_nearest is None else self.k_nearest


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
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

    inner_steps: PositiveInt = 3
    lr_pose: NonNegativeFloat = 2.0
    lr_context: NonNegativeFloat = 30.0
    lr_window: NonNegativeFloat = 0.0
    meta_sgd: bool = False
    meta_sgd_lr: PositiveFloat = 1e-2
    meta_sgd_clip: tuple[PositiveFloat, PositiveFloat] = (1e-6, 1e3)
    second_order: bool = True
    inner_coords: PositiveInt | None = None
    outer_coords: PositiveInt | None = None
    batch_size: PositiveInt = 32
    outer_lr: PositiveFloat = 5e-4
    grad_clip: PositiveFloat | None = 1.0

    def __post_init__(self) -> None:
        low, high = self.meta_sgd_clip
        if low >= high:
            raise ValueError(f"meta_sgd_clip={self.meta_sgd_clip} needs low < high")


PROFILES = ("quick", "standard", "full")


def profile_from_env(default: str = "quick") -> str:
    """The run profile: the ``ENF_PROFILE`` environment variable, else ``default``."""
    profile = os.environ.get("ENF_PROFILE", default)
    if profile not in PROFILES:
        raise ValueError(f"ENF_PROFILE={profile!r}; choose one of {PROFILES}")
    return profile
