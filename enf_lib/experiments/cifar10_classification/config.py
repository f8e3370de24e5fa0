"""The configuration of the CIFAR-10 classification experiment and its three profiles."""

from __future__ import annotations

from typing import Annotated

import pydantic.dataclasses
from pydantic import Field, NonNegativeInt, PositiveInt

from enf_lib.classifiers import ClassifierConfig
from enf_lib.config import STRICT, ENFConfig, FitConfig

NAME = "cifar10-classification"
CLASSIFIERS = ("transformer", "invariant")


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The whole experiment.

    Attributes:
      enf, fit: the decoder and its meta-learning.
      classifier: both classifiers' architecture and training.
      train_images, test_images: how many images of each split (``None`` = all); prefixes of
        the class-interleaved splits, so class-balanced.
      meta_steps: outer steps of meta-learning.
      fit_batch_size: images fitted at once when computing latents.
      shifts: pixel shifts (applied along both axes) of the invariance experiment.
      seed: of everything random.
    """

    enf: ENFConfig
    fit: FitConfig
    classifier: ClassifierConfig
    train_images: Annotated[int, Field(ge=10)] | None = None
    test_images: Annotated[int, Field(ge=10)] | None = None
    meta_steps: NonNegativeInt = 1000
    fit_batch_size: PositiveInt = 256
    shifts: tuple[Annotated[int, Field(ge=1, le=16)], ...] = (1, 2, 3, 4)
    seed: int = 0


PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: a small ENF, a tenth of the training set. Second order with
    # 256 of the 1,024 pixels per inner step and all of them in the outer loss. At the former
    # profile's run time it beats 500 first-order steps on 256/512-pixel subsets (test PSNR 22.1
    # against 19.4 dB, 40.9/40.1 % against 37.2/33.8 %; 39.3/41.6 % once train_model's epochs
    # were fixed); benchmarks/README.md.
    "quick": Config(
        enf=ENFConfig(num_latents=16, latent_dim=32, hidden_dim=64, att_dim=32, num_heads=2,
                      num_freqs=32),
        fit=FitConfig(batch_size=8, outer_lr=2e-3, inner_coords=256),
        classifier=ClassifierConfig(dim=64, depth=2, num_heads=4, steps=300, batch_size=128,
                                    lr=2e-3),
        train_images=5_000, test_images=1_000, meta_steps=220, shifts=(1, 2, 4)),
    # One H100-class GPU, under 8 minutes: the reference ENF, all data, second order.
    "standard": Config(
        enf=ENFConfig(),
        fit=FitConfig(batch_size=32),
        classifier=ClassifierConfig(dim=128, depth=4, num_heads=4, steps=4000, batch_size=256),
        meta_steps=3000, fit_batch_size=1024),
    # Paper scale: 10 epochs of ENF meta-learning (15,625 steps at batch 32), a larger classifier.
    "full": Config(
        enf=ENFConfig(),
        fit=FitConfig(batch_size=32),
        classifier=ClassifierConfig(dim=256, depth=6, num_heads=8, steps=10_000,
                                    batch_size=256, lr=5e-4),
        meta_steps=15_625, fit_batch_size=1024),
}
