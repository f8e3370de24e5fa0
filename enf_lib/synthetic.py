"""Small synthetic image sets for tests and demos: coloured shapes on a background.

Deterministic given a seed, NumPy only, float32 in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np


def shapes_dataset(num: int, size: int = 32, channels: int = 3, seed: int = 0,
                   max_shapes: int = 3) -> np.ndarray:
    """``(num, size, size, channels)`` images, each with 1 to ``max_shapes`` discs, squares or
    stripes in random colours on a smooth colour gradient."""
    if num < 1 or size < 2 or channels < 1 or max_shapes < 1:
        raise ValueError(f"need num >= 1, size >= 2, channels >= 1, max_shapes >= 1; got "
                         f"{num}, {size}, {channels}, {max_shapes}")
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.empty((num, size, size, channels), np.float32)
    for i in range(num):
        a, b = rng.uniform(0, 1, (2, channels))
        img = a + (b - a) * (r if rng.random() < 0.5 else c)[..., None]
        for _ in range(rng.integers(1, max_shapes + 1)):
            cy, cx = rng.uniform(0.15, 0.85, 2)
            radius = rng.uniform(0.1, 0.3)
            kind = rng.integers(3)
            if kind == 0:
                mask = (r - cy) ** 2 + (c - cx) ** 2 < radius**2
            elif kind == 1:
                mask = (np.abs(r - cy) < radius) & (np.abs(c - cx) < radius)
            else:
                angle = rng.uniform(0, np.pi)
                mask = np.sin((r * np.cos(angle) + c * np.sin(angle)) * np.pi / radius) > 0
            img[mask] = rng.uniform(0, 1, channels)
        images[i] = img
    return np.clip(images, 0.0, 1.0)
