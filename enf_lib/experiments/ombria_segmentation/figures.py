"""The figures of the OMBRIA segmentation experiment."""

from __future__ import annotations

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from enf_lib.experiments.ombria_segmentation.config import Config
from enf_lib.experiments.ombria_segmentation.stages import Data
from enf_lib.latents import Latents
from enf_lib.ombria import CHANNEL_GROUPS
from enf_lib.plotting import plot_latents
from enf_lib.segmentation import threshold

_ROWS = (("S1 before", "s1_before"), ("S2 before*", "s2_before"), ("S1 after", "s1_after"),
         ("S2 after*", "s2_after"))
FALSE_COLOUR = ("* S2 as stored: false colour from bands B3 (green), B8 (near infrared) and "
                "B11 (short-wave infrared), probably red = B11, green = B8, blue = B3; "
                "water looks dark blue, vegetation green, bare soil pink.")


def _rows(images: np.ndarray) -> list[np.ndarray]:
    images = images / 255.0 if images.dtype == np.uint8 else images
    return [images[..., CHANNEL_GROUPS[g]] for _, g in _ROWS]


def _grid(rows: list[tuple[str, np.ndarray]], titles: list[str], caption: str | None = None,
          size: float = 1.6) -> Figure:
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            image = np.clip(np.asarray(images[c], np.float32), 0, 1)
            gray = image.ndim == 2 or image.shape[-1] == 1
            ax.imshow(image.reshape(image.shape[:2]) if gray else image,
                      cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r, 0].set_ylabel(label, fontsize=10)
    if caption:
        fig.text(0.01, 0.0, caption, fontsize=9, ha="left", va="top", wrap=True)
    fig.tight_layout()
    return fig


def figure_inputs(config: Config, data: Data) -> Figure:
    """The first ``num_show`` test tiles: both sensors before and after, and the flood mask."""
    n = config.num_show
    rows = list(zip([label for label, _ in _ROWS], _rows(data.test_inputs[:n])))
    rows.append(("flood mask", data.test_masks[:n].astype(np.float32)))
    return _grid(rows, [f"tile {i}" for i in data.test_ids[:n]], FALSE_COLOUR)


def figure_reconstructions(config: Config, data: Data, recon: dict[str, np.ndarray]) -> Figure:
    """Targets and reconstructions of the first test tiles, row by row."""
    n = config.num_show
    rows = []
    for (label, _), true, pred in zip(_ROWS, _rows(data.test_inputs[:n]),
                                      _rows(recon["shown"])):
        rows += [(label, true), (f"{label} ENF", pred)]
    return _grid(rows, [f"tile {i}" for i in data.test_ids[:n]], FALSE_COLOUR)


def figure_masks(config: Config, data: Data, prob: np.ndarray) -> Figure:
    """For the first test tiles: S2 after, true mask, flood probability, predicted mask."""
    n = config.num_show
    after = _rows(data.test_inputs[:n])[3]
    pred = threshold(prob[:n], config.threshold).astype(np.float32)
    rows = [("S2 after*", after), ("true mask", data.test_masks[:n].astype(np.float32)),
            ("probability", prob[:n]), ("predicted", pred)]
    return _grid(rows, [f"tile {i}" for i in data.test_ids[:n]], FALSE_COLOUR)


def figure_latents(config: Config, data: Data, z_test: Latents) -> Figure:
    """Latent positions and windows over the S1 after image of the first test tiles."""
    n = config.num_show
    images = _rows(data.test_inputs[:n])[2]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        z = jax.tree.map(lambda a, i=i: np.asarray(a)[i], z_test)
        plot_latents(ax, images[i], z)
        ax.set_title(f"tile {data.test_ids[i]}", fontsize=10)
    fig.tight_layout()
    return fig
