"""Quality of generated images: nearest training neighbours (memorisation) and FID.

FID uses ``pytorch-fid``'s Inception network, an optional extra (``pip install
"enf_lib[fid]"``); without it, or without its weights, :func:`fid_or_none` says why.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np


def nearest_distances(queries: np.ndarray, references: np.ndarray,
                      batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of each query ``(Q, ...)`` to its nearest reference ``(R, ...)`` (both
    flattened), and that reference's index: ``(Q,)``, ``(Q,)``."""
    ref = jnp.asarray(references.reshape(len(references), -1), jnp.float32)
    ref_sq = jnp.sum(ref**2, -1)

    @jax.jit
    def nearest(q: jax.Array) -> tuple[jax.Array, jax.Array]:
        d2 = jnp.sum(q**2, -1)[:, None] - 2 * q @ ref.T + ref_sq[None]
        idx = jnp.argmin(d2, -1)
        return jnp.sqrt(jnp.maximum(jnp.take_along_axis(d2, idx[:, None], -1)[:, 0], 0)), idx

    flat = queries.reshape(len(queries), -1).astype(np.float32)
    dist, index = [], []
    for start in range(0, len(flat), batch_size):
        d, i = nearest(jnp.asarray(flat[start:start + batch_size]))
        dist.append(np.asarray(d))
        index.append(np.asarray(i))
    return np.concatenate(dist), np.concatenate(index)


def fid_or_none(generated: np.ndarray, real: np.ndarray) -> tuple[float | None, str]:
    """FID between two image sets ``(N, H, W, 3)`` in ``[0, 1]`` with ``pytorch-fid``'s
    Inception network, or ``None`` with the reason when the package or its weights (which it
    would download) are not available here."""
    try:
        import torch
        from pytorch_fid.fid_score import calculate_frechet_distance
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
    except ImportError:
        return None, "pytorch-fid is not installed (pip install 'enf_lib[fid]')"
    weights = f"{torch.hub.get_dir()}/checkpoints/{FID_WEIGHTS_URL.rsplit('/', 1)[-1]}"
    if not os.path.exists(weights):
        return None, f"FID Inception weights not found at {weights} (no download here)"
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    def features(images: np.ndarray) -> np.ndarray:
        feats = []
        with torch.no_grad():
            for start in range(0, len(images), 200):
                x = torch.from_numpy(images[start:start + 200].transpose(0, 3, 1, 2).copy())
                feats.append(net(x.float())[0].squeeze(-1).squeeze(-1).numpy())
        return np.concatenate(feats).astype(np.float64)

    a, b = features(generated), features(real)
    fid = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                     b.mean(0), np.cov(b, rowvar=False))
    return float(fid), f"pytorch-fid, {len(a)} samples vs {len(b)} test images"
