"""CIFAR-10 classification from ENF latents.

Stages (each cached in the run folder, see :mod:`enf_lib.experiments.runner`):

1. ``meta_train``: meta-learn the ENF on the training images (checkpointed, resumable).
2. ``latents_train`` / ``latents_test``: fit latents to every image with the frozen ENF; context
   statistics come from the training latents only.
3. ``classifier_transformer`` / ``classifier_invariant``: train both latent classifiers
   (:mod:`enf_lib.classifiers`).
4. ``evaluate``: test accuracy, per-class accuracy and confusion matrices.
5. ``shifts``: shift the test images by a few pixels, fit their latents again and measure how
   each classifier's accuracy changes (what equivariance buys).

The configuration and profiles are in :mod:`.config`, the stages in :mod:`.stages`, the figures
in :mod:`.figures`; :func:`run` chains them. Command line:
``python -m enf_lib.experiments cifar10-classification --profile quick --out DIR``.
"""

from __future__ import annotations

from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

from enf_lib.experiments.cifar10_classification.config import CLASSIFIERS, NAME, PROFILES, Config
from enf_lib.experiments.cifar10_classification.figures import (confusion_figure, latents_figure,
                                                                shift_figure)
from enf_lib.experiments.cifar10_classification.stages import (evaluate, fit_split, load_data,
                                                               pixel_shift, shift_experiment,
                                                               shift_images, train_classifiers)
from enf_lib.experiments.runner import Run
from enf_lib.experiments.stages import meta_train_stage
from enf_lib.fitting import MetaLearner
from enf_lib.latents import ContextStats
from enf_lib.plotting import plot_history


def run(cfg: Config, run: Run) -> dict[str, Any]:
    """Every stage; writes ``metrics.json`` and figures into ``run.out`` and returns the metrics."""
    with run.stage("load_data"):
        data = load_data(cfg)
    run.use_data(*data.values())
    n_train = len(data["x_train"])
    learner = MetaLearner(cfg.enf, cfg.fit, (32, 32))
    state, enf_log = meta_train_stage(run, learner, data["x_train"], steps=cfg.meta_steps,
                                      seed=cfg.seed, data_id=("cifar10", "train", n_train))
    z_train, psnr_train = fit_split(run, cfg, learner, state, "train", data["x_train"])
    z_test, psnr_test = fit_split(run, cfg, learner, state, "test", data["x_test"])
    stats = ContextStats.from_latents(z_train)
    norm = lambda z: jax.tree.map(np.asarray, stats.normalize(z))
    models = train_classifiers(run, cfg, norm(z_train), data["y_train"])

    results: dict[str, Any] = evaluate(run, models, norm(z_test), data["y_test"])
    results.update(test_psnr=float(psnr_test.mean()), train_psnr=float(psnr_train.mean()),
                   num_train=n_train, num_test=len(data["x_test"]))
    results.update(shift_experiment(run, cfg, learner, state, models, norm, data, z_test))

    figures = {"confusion": confusion_figure(results),
               "shift_accuracy": shift_figure(results),
               "latents": latents_figure(data["x_test"], data["y_test"], z_test)}
    if cfg.meta_steps:
        figures["enf_training"] = plot_history(enf_log.history)
    for name, fig in figures.items():
        run.save_figure(fig, name)
        plt.close(fig)
    return run.write_metrics(results)


__all__ = ["CLASSIFIERS", "NAME", "PROFILES", "Config", "confusion_figure", "evaluate",
           "fit_split", "latents_figure", "load_data", "pixel_shift", "run", "shift_experiment",
           "shift_figure", "shift_images", "train_classifiers"]
