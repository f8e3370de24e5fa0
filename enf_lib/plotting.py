"""Figures the notebooks share: image grids, latent point clouds over images, training curves."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from enf_lib.coordinates import coords_to_pixels
from enf_lib.latents import Latents


def _show(ax: Axes, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str] | None = None,
               titles: Sequence[str] | None = None, size: float = 1.4) -> Figure:
    """One row of images per entry of ``rows`` (each ``(n, H, W, C)`` in ``[0, 1]``)."""
    n = len(rows[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        for c in range(n):
            _show(axes[r, c], images[c])
            if titles is not None and r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    fig.tight_layout()
    return fig


def plot_latents(ax: Axes, image: np.ndarray, latents: Latents, windows: bool = True,
                 color: str = "tab:red") -> None:
    """Draw one signal's latent positions (and orientation, window) over its image.

    ``image (H, W, C)``; ``latents`` for that one signal. Positions are mapped with
    :func:`~enf_lib.coordinates.coords_to_pixels`, so they sit where the decoder places them.
    """
    h, w = image.shape[:2]
    _show(ax, image)
    pix = np.asarray(coords_to_pixels(latents.position, h, w))          # (L, 2) as (row, col)
    scale = max(h, w) / 2                                                # coordinate -> pixels
    ax.scatter(pix[:, 1], pix[:, 0], s=14, c=color, edgecolors="white", linewidths=0.6, zorder=3)
    if windows:
        for (r, c), sigma in zip(pix, np.asarray(latents.window)[:, 0]):
            ax.add_patch(Circle((c, r), abs(sigma) * scale, fill=False, lw=0.6, color=color,
                                alpha=0.6))
    if latents.pose.shape[-1] == 3:                                      # SE(2): orientation
        theta = np.asarray(latents.pose[:, 2])
        ax.quiver(pix[:, 1], pix[:, 0], np.sin(theta), np.cos(theta), color=color,
                  angles="xy", scale_units="xy", scale=0.25, width=0.008)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def plot_history(history: dict[str, list[tuple[int, float]]],
                 keys: Sequence[str] = ("loss", "psnr"), smooth: int = 10) -> Figure:
    """Training curves from :attr:`enf_lib.tracking.MetricLogger.history`, with a moving average."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = map(np.asarray, zip(*history[key]))
        ax.plot(steps, values, alpha=0.3, lw=0.8)
        if len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(values, kernel, "valid"), lw=1.5)
        ax.set_xlabel("outer step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key == "loss":
            ax.set_yscale("log")
    fig.tight_layout()
    return fig
