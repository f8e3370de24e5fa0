"""Pixels <-> coordinates in ``[-1, 1]^2``.

Convention: coordinate entry ``i`` follows image axis ``i``, so ``x[..., 0]`` runs down the rows
and ``x[..., 1]`` along the columns; a pixel's coordinate is its centre. The longer image side
spans ``[-1, 1]`` and both axes share one scale, so a non-square image keeps its aspect ratio
(a rotation of the coordinates is a rotation of the picture, which equivariance needs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def coordinate_grid(height: int, width: int) -> Array:
    """``(H * W, 2)`` pixel-centre coordinates in row-major order (reshapes to ``(H, W, 2)``)."""
    _check_size(height, width)
    scale = max(height, width)
    rows = (2 * jnp.arange(height) + 1 - height) / scale
    cols = (2 * jnp.arange(width) + 1 - width) / scale
    grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), -1)
    return grid.reshape(-1, 2).astype(jnp.float32)


def coords_to_pixels(coords: Array, height: int, width: int) -> Array:
    """Coordinates ``(..., 2)`` -> fractional pixel indices ``(..., 2)`` as ``(row, col)``.

    Pixel centres map to whole numbers; inverse of :func:`pixels_to_coords`. Useful for drawing
    latent positions over an image with ``plt.scatter(col, row)``.
    """
    _check_size(height, width)
    scale = max(height, width)
    size = jnp.asarray([height, width], dtype=jnp.float32)
    return (coords * scale + size - 1) / 2


def pixels_to_coords(pixels: Array, height: int, width: int) -> Array:
    """Fractional pixel indices ``(..., 2)`` as ``(row, col)`` -> coordinates ``(..., 2)``."""
    _check_size(height, width)
    scale = max(height, width)
    size = jnp.asarray([height, width], dtype=jnp.float32)
    return (2 * pixels + 1 - size) / scale


def images_to_signals(images: Array) -> Array:
    """``(B, H, W, C) -> (B, H * W, C)``, matching :func:`coordinate_grid`'s order."""
    return images.reshape(images.shape[0], -1, images.shape[-1])


def signals_to_images(signals: Array, height: int, width: int) -> Array:
    """``(B, H * W, C) -> (B, H, W, C)``."""
    return signals.reshape(signals.shape[0], height, width, signals.shape[-1])
