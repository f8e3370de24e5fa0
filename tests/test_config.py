"""Validated configs (pydantic dataclasses) and the argument checks of latents and fitting."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from enf_lib.checkpoint import config_dict
from enf_lib.classifiers import ClassifierConfig
from enf_lib.config import ENFConfig, FitConfig
from enf_lib.diffusion import DiTConfig
from enf_lib.experiments import EXPERIMENTS, make_config
from enf_lib.experiments.ombria_segmentation import SegConfig
from enf_lib.experiments.runner import digest
from enf_lib.fitting import MetaLearner
from enf_lib.geometry import get_bi_invariant
from enf_lib.latents import init_latents

TINY = ENFConfig(num_latents=4, latent_dim=4, hidden_dim=8, att_dim=4, num_heads=1, num_freqs=4)


@pytest.mark.parametrize("cls, field, value", [
    (FitConfig, "batch_size", 2.5),
    (FitConfig, "second_order", 1),
    (FitConfig, "meta_sgd_clip", (1,)),
    (FitConfig, "meta_sgd_clip", [1e-6, 10.0]),        # tuples stay tuples
    (FitConfig, "outer_lr", float("inf")),
    (FitConfig, "inner_coords", True),
    (FitConfig, "batchsize", 8),                       # a typo is not ignored
    (ENFConfig, "num_freqs", 2.5),
    (ENFConfig, "k_nearest", True),
    (ClassifierConfig, "warmup", 2.5),
    (DiTConfig, "depth", True),
    (SegConfig, "steps", 2.5),
])
def test_bad_values_raise_a_value_error_naming_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        cls(**{field: value})


@pytest.mark.parametrize("name, assignment", [
    ("cifar10-classification", "meta_steps=2.5"),
    ("cifar10-classification", "fit.batch_size=2.5"),
    ("cifar10-classification", "shifts=(0, 2)"),
    ("ombria-segmentation", "enf.k_nearest=True"),
    ("ombria-segmentation", "seg.k_nearest=10000"),    # above enf.num_latents
    ("cifar10-diffusion", "fit.second_order=1"),
    ("cifar10-diffusion", "fit.meta_sgd_clip=(1,)"),
    ("cifar10-diffusion", "sampling.snapshots=1.5"),
])
def test_bad_experiment_overrides_raise_one_line_naming_the_field(name, assignment):
    field = assignment.split("=")[0].split(".")[-1]
    pattern = rf"override '{re.escape(assignment)}'.*\b{field}\b"
    with pytest.raises(ValueError, match=pattern) as err:
        make_config(name, "quick", [assignment])
    assert "\n" not in str(err.value)                  # the command line prints one line


def test_good_values_are_accepted_ints_as_floats():
    fit = FitConfig(lr_context=3, meta_sgd_clip=(1e-6, 10), grad_clip=None)
    assert fit.lr_context == 3.0 and isinstance(fit.lr_context, float)
    assert fit.meta_sgd_clip == (1e-6, 10.0) and isinstance(fit.meta_sgd_clip[1], float)
    cfg = make_config("cifar10-classification", "quick",
                      ["fit.meta_sgd_clip=(1e-6,10)", "train_images=None", "fit.grad_clip=None",
                       "fit.lr_context=3", "enf.k_nearest=None", "shifts=(1, 2)"])
    assert cfg.fit.meta_sgd_clip == (1e-6, 10.0) and cfg.shifts == (1, 2)
    assert cfg.train_images is None and cfg.fit.grad_clip is None and cfg.enf.k_nearest is None
    assert isinstance(cfg.fit.lr_context, float) and type(cfg.shifts) is tuple
    assert make_config("cifar10-diffusion", "quick", ["sampling.guidance_sweep=(0, 1)"]
                       ).sampling.guidance_sweep == (0.0, 1.0)


def test_configs_hash_replace_and_digest_alike_however_a_float_is_written():
    three = dataclasses.replace(FitConfig(), lr_context=3)
    assert three == FitConfig(lr_context=3.0) and hash(three) == hash(FitConfig(lr_context=3.0))
    assert digest(three) == digest(FitConfig(lr_context=3.0))     # one cache key for both
    assert [f.name for f in dataclasses.fields(three)][:2] == ["inner_steps", "lr_pose"]
    saved = json.loads(json.dumps(config_dict(TINY, three)))     # what a checkpoint compares
    assert saved == config_dict(TINY, three)
    assert ENFConfig(**saved["ENFConfig"]) == TINY
    assert FitConfig(**{**saved["FitConfig"],
                        "meta_sgd_clip": tuple(saved["FitConfig"]["meta_sgd_clip"])}) == three
    scale = jax.jit(lambda cfg, x: x * cfg.lr_context, static_argnums=0)
    assert float(scale(three, 2.0)) == 6.0
    for name in EXPERIMENTS:
        for profile in ("quick", "standard", "full"):
            cfg = make_config(name, profile)
            assert dataclasses.replace(cfg) == cfg and hash(dataclasses.replace(cfg)) == hash(cfg)


def test_init_latents_refuses_no_latents():
    with pytest.raises(ValueError, match="num_latents"):
        init_latents(jax.random.key(0), 0, 4, get_bi_invariant("translation"))


def test_fitting_refuses_bad_steps_and_empty_batches():
    learner = MetaLearner(TINY, FitConfig(batch_size=2), (8, 8))
    state = learner.init(jax.random.key(0))
    images = np.full((2, 8, 8, 3), 0.5, np.float32)
    for steps in (-3, 0, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            learner.fit(state, images, jax.random.key(1), steps=steps)
    empty = images[:0]
    for method in (learner.fit, learner.fit_dataset, learner.evaluate):
        with pytest.raises(ValueError, match=r"images must have shape .* B >= 1"):
            method(state, empty, jax.random.key(1))
