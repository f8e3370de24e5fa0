"""The figures of the CIFAR-10 classification experiment."""

from __future__ import annotations

from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

from enf_lib.datasets import CIFAR10_CLASSES
from enf_lib.experiments.cifar10_classification.config import CLASSIFIERS
from enf_lib.latents import Latents
from enf_lib.plotting import plot_latents


def shift_figure(results: dict[str, Any]) -> plt.Figure:
    """Test accuracy against the shift, with latents fitted again and translated directly."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, key, title in zip(axes, ("shift_accuracy", "shift_accuracy_latent"),
                              ("images shifted, latents fitted again",
                               "latents translated directly")):
        for kind, acc in results[key].items():
            ax.plot(results["shift_pixels"], 100 * np.asarray(acc), "o-", label=kind)
        ax.set(xlabel="shift (pixels, both axes)", title=title, xticks=results["shift_pixels"])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    return fig


def latents_figure(images: np.ndarray, labels: np.ndarray, z: Latents, n: int = 6) -> plt.Figure:
    """The first ``n`` images with their latent poses and windows, titled by class."""
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3))
    for i, ax in enumerate(axes):
        plot_latents(ax, images[i] / 255.0, jax.tree.map(lambda a: a[i], z))
        ax.set_title(CIFAR10_CLASSES[labels[i]], fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(results: dict[str, Any]) -> plt.Figure:
    """Each classifier's confusion matrix, rows normalised."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, kind in zip(axes, CLASSIFIERS):
        cm = np.asarray(results["confusion"][kind], float)
        ax.imshow(cm / cm.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(10), CIFAR10_CLASSES, rotation=90, fontsize=9)
        ax.set_yticks(range(10), CIFAR10_CLASSES, fontsize=9)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{kind}: {100 * results['test_accuracy'][kind]:.1f} %")
    fig.tight_layout()
    return fig
