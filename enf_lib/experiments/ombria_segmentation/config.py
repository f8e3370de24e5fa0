"""The configuration of the OMBRIA segmentation experiment and its three profiles."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pydantic.dataclasses
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from enf_lib.config import STRICT, ENFConfig, FitConfig
from enf_lib.ombria import TILE_SIZE

NAME = "ombria-segmentation"


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SegConfig:
    """The mask decoder: an ENF with one output, and how it is trained.

    Its latent shape (number, dimension, bi-invariant) is that of the reconstruction ENF;
    the fields here set the rest of its architecture and its supervised training.

    Attributes:
      hidden_dim, att_dim, num_heads, k_nearest, freq_query, freq_value, num_freqs,
        head_depth: as in :class:`~enf_lib.config.ENFConfig`.
      steps, batch_size, lr: Adam steps, tiles per step, learning rate.
      coords_per_step: random pixels scored per step (``None`` = all).
      dice_weight: weight of the soft Dice loss added to the cross-entropy (0 = off).
      ema_decay: keep an exponential moving average of the weights (``None`` = off).
    """

    hidden_dim: PositiveInt = 128
    att_dim: PositiveInt = 128
    num_heads: PositiveInt = 3
    k_nearest: PositiveInt | None = 4
    freq_query: PositiveFloat = 3.0
    freq_value: PositiveFloat = 5.0
    num_freqs: PositiveInt = 64
    head_depth: NonNegativeInt = 1
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 5e-4
    coords_per_step: PositiveInt | None = 1024
    dice_weight: NonNegativeFloat = 0.5
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None

    def enf(self, recon: ENFConfig) -> ENFConfig:
        """The mask decoder's :class:`ENFConfig`: latent shape from ``recon``, one output."""
        return dataclasses.replace(
            recon, num_out=1, hidden_dim=self.hidden_dim, att_dim=self.att_dim,
            num_heads=self.num_heads, k_nearest=self.k_nearest, freq_query=self.freq_query,
            freq_value=self.freq_value, num_freqs=self.num_freqs, head_depth=self.head_depth)


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The OMBRIA segmentation experiment.

    Attributes:
      size: tile side after downscaling (a divisor of 256; 256 = full resolution).
      num_train: training tiles (the first by id; ``None`` = every one available).
      enf, fit: the reconstruction ENF (8 outputs) and its meta-learning.
      meta_steps: outer steps of meta-learning.
      seg: the mask decoder and its training.
      fit_batch_size: tiles per chunk when fitting latents.
      decode_batch_size, decode_chunk: tiles and pixels per step when decoding test tiles.
      threshold: flood probability at which a pixel counts as flooded.
      num_show: test tiles shown in the figures.
      seed: seeds everything.
    """

    size: PositiveInt = 64
    num_train: PositiveInt | None = None
    enf: ENFConfig = ENFConfig(num_out=8)
    fit: FitConfig = FitConfig()
    meta_steps: PositiveInt = 1000
    seg: SegConfig = SegConfig()
    fit_batch_size: PositiveInt = 64
    decode_batch_size: PositiveInt = 16
    decode_chunk: PositiveInt = 4096
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    num_show: PositiveInt = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if TILE_SIZE % self.size:
            raise ValueError(f"size={self.size} is not a divisor of {TILE_SIZE}")
        if self.enf.num_out != 8:
            raise ValueError(f"enf.num_out={self.enf.num_out} is not 8 (the OMBRIA channels)")
        if self.num_train is not None and self.num_train < self.fit.batch_size:
            raise ValueError(f"num_train={self.num_train} is below "
                             f"fit.batch_size={self.fit.batch_size}")
        if self.seg.k_nearest is not None and self.seg.k_nearest > self.enf.num_latents:
            raise ValueError(f"seg.k_nearest={self.seg.k_nearest} exceeds "
                             f"enf.num_latents={self.enf.num_latents}")


_QUICK_ENF = ENFConfig(num_out=8, num_latents=64, latent_dim=32, hidden_dim=64, att_dim=32,
                       num_heads=2, num_freqs=32, freq_query=3.0, freq_value=5.0)
_REF_ENF = ENFConfig(num_out=8, num_latents=256, latent_dim=256, hidden_dim=256, att_dim=256,
                     num_heads=3, freq_query=15.0, freq_value=30.0)
_REF_FIT = FitConfig(inner_steps=3, lr_pose=0.0, lr_context=60.0, lr_window=0.0,
                     second_order=False, batch_size=8, outer_lr=5e-4)

PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: 32x32 tiles, a small decoder, first-order meta-learning.
    "quick": Config(
        size=32, num_train=200, enf=_QUICK_ENF,
        fit=dataclasses.replace(_REF_FIT, lr_context=30.0, outer_lr=1e-3,
                                inner_coords=256, outer_coords=512),
        meta_steps=250,
        seg=SegConfig(hidden_dim=64, att_dim=32, num_heads=2, num_freqs=32, steps=400,
                      batch_size=8, lr=1e-3, coords_per_step=256),
        fit_batch_size=64, decode_batch_size=70, decode_chunk=1024),
    # One GPU, minutes: 128x128 tiles, the reference architecture, pixel subsampling
    # (XLA's estimate: 0.31 TFLOP per meta-learning step, 0.06 per mask decoder step).
    "standard": Config(
        size=128, enf=_REF_ENF,
        fit=dataclasses.replace(_REF_FIT, inner_coords=4096, outer_coords=4096),
        meta_steps=3000,
        seg=SegConfig(steps=3000, coords_per_step=4096),
        fit_batch_size=8, decode_batch_size=8, decode_chunk=4096),
    # Paper scale: full 256x256 tiles, 256 latents x 256, subsampled pixels to fit 80 GB;
    # 8,000 steps of batch 8 are about the reference's 100 epochs of 624 tiles per model.
    "full": Config(
        size=256, enf=_REF_ENF,
        fit=dataclasses.replace(_REF_FIT, inner_coords=8192, outer_coords=8192),
        meta_steps=8_000,
        seg=SegConfig(steps=8_000, coords_per_step=8192),
        fit_batch_size=8, decode_batch_size=8, decode_chunk=8192),
}
