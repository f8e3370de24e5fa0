"""The configuration of the CIFAR-10 diffusion experiment and its three profiles."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pydantic.dataclasses
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from enf_lib import classifiers
from enf_lib.config import STRICT, ENFConfig, FitConfig
from enf_lib.datasets import CIFAR10_CLASSES
from enf_lib.diffusion import DiTConfig, Method

NAME = "cifar10-diffusion"
NUM_CLASSES = len(CIFAR10_CLASSES)


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class DataConfig:
    """How many CIFAR-10 images each stage uses (class-balanced prefixes, at least one image per
    class)."""

    num_train: Annotated[int, Field(ge=NUM_CLASSES)] = 50_000
    num_test: Annotated[int, Field(ge=NUM_CLASSES)] = 10_000


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class DiffusionConfig:
    """The diffusion transformer and its training (AdamW, warm-up, EMA).

    ``dit.token_dim`` is replaced by ``enf.latent_dim`` (one token per latent: its context),
    see :meth:`Config.dit`.
    """

    dit: DiTConfig = DiTConfig()
    steps: PositiveInt = 20_000
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 3e-4
    warmup: NonNegativeInt = 500
    weight_decay: NonNegativeFloat = 0.0
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    label_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SamplingConfig:
    """Class-conditional sampling and the figures made from it.

    Attributes:
      per_class: samples per class for the metrics.
      num_steps, method: integration steps and method (``euler`` or ``heun``).
      guidance_scale: CFG scale of the reported samples.
      guidance_sweep: scales compared (classifier accuracy and a figure).
      sweep_per_class: samples per class at each scale of the sweep.
      snapshots: states kept along the noise-to-image trajectory figure (at least 2).
    """

    per_class: PositiveInt = 1000
    num_steps: PositiveInt = 100
    method: Method = "euler"
    guidance_scale: float = 2.0
    guidance_sweep: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    sweep_per_class: PositiveInt = 100
    snapshots: Annotated[int, Field(ge=2)] = 8


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class EvalConfig:
    """Offline sample quality.

    Attributes:
      classifier_kind, classifier: the latent classifier trained on real training latents.
      nn_samples: samples (and test images) whose nearest training neighbours are searched.
      fid: compute FID against the test images when the Inception weights are available.
    """

    classifier_kind: classifiers.Kind = "transformer"
    classifier: classifiers.ClassifierConfig = classifiers.ClassifierConfig()
    nn_samples: PositiveInt = 1000
    fid: bool = True


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The experiment; ``meta_steps`` outer steps of ENF meta-learning, then the DiT.

    ``pose_study``: also meta-train a decoder with moving poses (``fit.lr_pose`` replaced by
    ``pose_study_lr``) and measure what sampling at grid poses would cost it.
    """

    data: DataConfig = DataConfig()
    enf: ENFConfig = ENFConfig(num_latents=64, latent_dim=16)
    fit: FitConfig = FitConfig(batch_size=64, lr_pose=0.0)
    meta_steps: PositiveInt = 1_563
    fit_batch: PositiveInt = 256
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()
    evaluation: EvalConfig = EvalConfig()
    pose_study: bool = False
    pose_study_lr: PositiveFloat = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.diffusion.dit.num_classes != NUM_CLASSES:
            raise ValueError(f"diffusion.dit.num_classes must be {NUM_CLASSES}")
        if self.fit.lr_pose != 0 or self.fit.lr_window != 0:
            raise ValueError("fit.lr_pose and fit.lr_window must be 0 (the sampler generates "
                             "contexts at the fixed initial poses)")

    @property
    def dit(self) -> DiTConfig:
        """The DiT of ``diffusion.dit`` with one token entry per context entry."""
        return dataclasses.replace(self.diffusion.dit, token_dim=self.enf.latent_dim)


_SMALL_ENF = ENFConfig(num_latents=16, latent_dim=16, hidden_dim=64, att_dim=32, num_heads=2,
                       num_freqs=32)
_SMALL_FIT = FitConfig(batch_size=8, second_order=False, outer_lr=1e-3, inner_coords=256,
                       outer_coords=512, lr_pose=0.0)

PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: small ENF and DiT on 2,000 images.
    "quick": Config(
        data=DataConfig(num_train=1_500, num_test=500),
        enf=_SMALL_ENF, fit=_SMALL_FIT, meta_steps=300, fit_batch=250,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=96, depth=3, num_heads=4, mlp_ratio=2),
            steps=1_200, batch_size=128, lr=1e-3, warmup=100, ema_decay=0.99),
        sampling=SamplingConfig(per_class=50, num_steps=40, guidance_sweep=(0.0, 1.0, 2.0, 4.0),
                                sweep_per_class=20, snapshots=7),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(
            dim=64, depth=2, num_heads=4, steps=500, batch_size=128, lr=1e-3, warmup=50),
            nn_samples=200),
        pose_study=True),
    # One H100, under 8 minutes: the reference ENF (64 x 16) on 10,000 images, a 20M DiT.
    "standard": Config(
        data=DataConfig(num_train=10_000, num_test=2_000),
        enf=ENFConfig(num_latents=64, latent_dim=16),
        fit=FitConfig(batch_size=64, second_order=False, inner_coords=512, outer_coords=1024,
                      lr_pose=0.0),
        meta_steps=1_000, fit_batch=500,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=384, depth=8, num_heads=6),
            steps=8_000, batch_size=256, lr=3e-4, warmup=500, ema_decay=0.999),
        sampling=SamplingConfig(per_class=200, num_steps=100, sweep_per_class=100),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(steps=3_000),
                              nn_samples=1_000),
        pose_study=False),
    # Paper scale: all 50,000 images, 2 ENF epochs (second order, batch 64) and 30 DiT
    # epochs of a DiT-B-sized transformer (width 768, depth 12: about 130M parameters).
    "full": Config(
        data=DataConfig(num_train=50_000, num_test=10_000),
        enf=ENFConfig(num_latents=64, latent_dim=16),
        fit=FitConfig(batch_size=64, second_order=True, lr_pose=0.0),
        meta_steps=1_563, fit_batch=500,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=768, depth=12, num_heads=12),
            steps=11_720, batch_size=128, lr=1e-4, warmup=1_000, ema_decay=0.9999),
        # 50,000 generated samples, as for the published FIDs.
        sampling=SamplingConfig(per_class=5_000, num_steps=100, sweep_per_class=200),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(steps=20_000),
                              nn_samples=2_000),
        pose_study=False),
}
