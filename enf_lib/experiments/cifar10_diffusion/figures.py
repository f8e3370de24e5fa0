"""The figures of the CIFAR-10 diffusion experiment."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from enf_lib.datasets import CIFAR10_CLASSES
from enf_lib.experiments.cifar10_diffusion.config import NUM_CLASSES
from enf_lib.plotting import image_grid


def sample_grid_figure(images: np.ndarray, labels: np.ndarray, per_row: int) -> plt.Figure:
    """One row per class: the first ``per_row`` images of that class."""
    rows = [images[labels == c][:per_row] for c in range(NUM_CLASSES)]
    return image_grid(rows, row_labels=list(CIFAR10_CLASSES), size=0.9)


def trajectory_figure(frames: np.ndarray, times: np.ndarray,
                      labels: np.ndarray) -> plt.Figure:
    """``frames (T, N, H, W, C)``: one row per sample, one column per time."""
    rows = [frames[:, i] for i in range(frames.shape[1])]
    return image_grid(rows, row_labels=[CIFAR10_CLASSES[c] for c in labels],
                      titles=[f"t = {t:.2f}" for t in times], size=0.9)


def guidance_figure(images: dict[float, np.ndarray], accuracy: dict[float, float]
                    ) -> plt.Figure:
    """One row per guidance scale (``images[w] (10, H, W, C)``, one per class)."""
    scales = sorted(images)
    fig = image_grid([images[w] for w in scales], titles=list(CIFAR10_CLASSES), size=0.9,
                     row_labels=[f"w={w:g}\nacc {accuracy[w]:.0%}" for w in scales])
    return fig


def neighbours_figure(samples: np.ndarray, neighbours: np.ndarray) -> plt.Figure:
    """Samples (top row) above their nearest training images (bottom row)."""
    return image_grid([samples, neighbours], row_labels=["sample", "nearest\ntrain"],
                      size=0.9)
