"""Binary segmentation from latents: metrics, the mask decoder's loss, chunked prediction.

Metrics follow the OMBRIA paper: pixel counts are summed over the *whole* evaluation set (one
confusion matrix, not an average of per-image scores); "mean IoU" is the mean of the IoUs of the
two classes (no flood, flood); the frequency-weighted IoU weights each class's IoU by its share
of the true pixels. Flood-class IoU and F1 are reported as well, because with a third of the
pixels flooded a "no flood everywhere" prediction already scores a mean IoU of about 0.33.

The mask decoder is an :class:`~enf_lib.model.EquivariantNeuralField` with one output, a logit,
trained on frozen latents with a logistic loss (sigmoid binary cross-entropy) plus, optionally, a
soft Dice loss; each step sees a random subset of the pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from enf_lib.batching import num_batches, padded_batches, random_subset
from enf_lib.coordinates import coordinate_grid
from enf_lib.latents import Latents
from enf_lib.model import ApplyFn
from enf_lib.progress import progress

Array = jax.Array
CLASSES: tuple[str, ...] = ("no_flood", "flood")
"""Class names; class ``1`` is the positive (flood) class."""


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _as_binary(values: np.ndarray | Array, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or 0/1 numbers, got {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (or booleans); threshold "
                         "probabilities first")
    return arr.astype(bool)


def confusion_counts(pred: np.ndarray | Array, target: np.ndarray | Array) -> np.ndarray:
    """Pixel counts ``(2, 2)`` int64 over all pixels of all images: ``[true class, predicted]``.

    ``pred`` and ``target`` are binary arrays of one shape (e.g. ``(N, H, W)``), booleans or
    0/1 numbers (1 = flood).
    """
    p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ in shape")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = p.size - tp - fp - fn
    return np.array([[tn, fp], [fn, tp]], np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Scores from a confusion matrix ``(2, 2)`` ``[true, predicted]`` (:func:`confusion_counts`).

    Returns ``pixel_accuracy``, ``iou_no_flood``, ``iou_flood`` (= ``flood_iou``), ``mean_iou``
    (mean of the two class IoUs), ``fw_iou`` (class IoUs weighted by true class frequency),
    ``flood_precision``, ``flood_recall``, ``flood_f1`` and ``flood_fraction`` (true share of
    flood pixels). A score whose denominator is zero (e.g. the IoU of a class that is absent
    from both prediction and target) is NaN; ``mean_iou`` then averages the defined IoUs.
    """
    c = np.asarray(confusion, np.float64)
    if c.shape != (2, 2) or np.any(c < 0) or c.sum() == 0:
        raise ValueError(f"confusion must be a (2, 2) matrix of non-negative counts with a "
                         f"positive total, got {c.tolist()}")
    (tn, fp), (fn, tp) = c
    total = c.sum()
    ious = [_ratio(tn, tn + fp + fn), _ratio(tp, tp + fp + fn)]
    freqs = [(tn + fp) / total, (tp + fn) / total]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "pixel_accuracy": float((tn + tp) / total),
        **{f"iou_{name}": iou for name, iou in zip(CLASSES, ious)},
        "flood_iou": ious[1],
        "mean_iou": float(np.nanmean(ious)) if not all(np.isnan(ious)) else float("nan"),
        "fw_iou": float(np.nansum([f * i for f, i in zip(freqs, ious)])),
        "flood_precision": precision,
        "flood_recall": recall,
        "flood_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "flood_fraction": float(freqs[1]),
    }


def evaluate_masks(pred: np.ndarray | Array, target: np.ndarray | Array) -> dict[str, float]:
    """:func:`segmentation_metrics` of binary ``pred`` against ``target`` (same shape)."""
    return segmentation_metrics(confusion_counts(pred, target))


def threshold(probabilities: np.ndarray | Array, level: float = 0.5) -> np.ndarray:
    """Binary masks ``probabilities >= level``; raises ``ValueError`` on NaN or values outside
    ``[0, 1]``."""
    p = np.asarray(probabilities)
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or infinite values")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(f"probabilities must lie in [0, 1], got [{p.min():.3g}, {p.max():.3g}]")
    if not 0 < level < 1:
        raise ValueError(f"threshold level must be in (0, 1), got {level}")
    return p >= level


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def mask_loss(logits: Array, targets: Array, dice_weight: float = 0.0
              ) -> tuple[Array, dict[str, Array]]:
    """Mean sigmoid binary cross-entropy plus ``dice_weight`` times the soft Dice loss.

    ``logits (B, N)`` and ``targets (B, N)`` in ``{0, 1}``. The soft Dice loss
    ``1 - (2 sum p t + 1) / (sum p + sum t + 1)`` (``p = sigmoid(logits)``, sums over the whole
    batch) rewards overlap with the flood class however rare it is. Returns the loss and
    metrics ``bce``, ``dice`` and ``accuracy`` (at probability 0.5).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    p = jax.nn.sigmoid(logits)
    dice = 1 - (2 * jnp.sum(p * targets) + 1) / (jnp.sum(p) + jnp.sum(targets) + 1)
    accuracy = jnp.mean((logits >= 0) == (targets > 0.5))
    return bce + dice_weight * dice, {"bce": bce, "dice": dice, "accuracy": accuracy}


def mask_loss_fn(coords: Array, num_coords: int | None, dice_weight: float = 0.0
                 ) -> Callable[[nnx.Module, dict[str, Array], Array],
                               tuple[Array, dict[str, Array]]]:
    """A ``loss_fn(model, batch, key)`` for :func:`enf_lib.training.train_model`.

    ``batch`` holds latents ``pose (B, L, d)``, ``context (B, L, D)``, ``window (B, L, 1)`` and
    masks ``mask (B, N)`` (0/1 floats, in the row-major order of ``coords (N, 2)``). Each step
    scores ``num_coords`` random coordinates (shared by the batch; all when ``None``).
    """
    coords = jnp.asarray(coords, jnp.float32)
    n = coords.shape[0]
    if num_coords is not None and num_coords < 1:
        raise ValueError(f"num_coords must be None or >= 1, got {num_coords}")

    def loss_fn(model: nnx.Module, batch: dict[str, Array], key: Array
                ) -> tuple[Array, dict[str, Array]]:
        if num_coords is None or num_coords >= n:
            idx = jnp.arange(n)
        else:
            idx = random_subset(key, n, num_coords)
        z = Latents(batch["pose"], batch["context"], batch["window"])
        logits = model(coords[idx], z)[..., 0]                               # (B, n)
        return mask_loss(logits, batch["mask"][:, idx], dice_weight)

    return loss_fn


# --------------------------------------------------------------------------------------------
# Chunked decoding
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 4))
def decode_chunked(apply: ApplyFn, params: Any, coords: Array, latents: Latents,
                   chunk: int) -> Array:
    """``apply(params, coords, latents)`` evaluated ``chunk`` coordinates at a time.

    ``coords (N, 2)``, latents with a batch axis ``B`` -> ``(B, N, C)``. Peak memory grows with
    ``B x chunk`` instead of ``B x N`` (``lax.map`` runs the chunks one after the other).
    """
    n = coords.shape[0]
    pad = -n % chunk
    blocks = jnp.pad(coords, ((0, pad), (0, 0))).reshape(-1, chunk, 2)
    out = jax.lax.map(lambda c: apply(params, c, latents), blocks)          # (K, B, chunk, C)
    b, c = out.shape[1], out.shape[-1]
    return jnp.moveaxis(out, 0, 1).reshape(b, -1, c)[:, :n]


def decode_dataset(apply: ApplyFn, params: Any, latents: Latents, coords: Array, *,
                   batch_size: int = 32, chunk: int = 4096,
                   desc: str = "decoding") -> np.ndarray:
    """Decode every signal of ``latents`` (leading axis ``M``, NumPy or JAX) at ``coords (N, 2)``.

    Works in batches of ``batch_size`` signals (the last one padded so the step compiles once)
    and chunks of ``chunk`` coordinates, with a progress bar. Returns ``(M, N, C)`` float32.
    """
    if batch_size < 1 or chunk < 1:
        raise ValueError(f"batch_size and chunk must be >= 1, got {batch_size}, {chunk}")
    chunk = min(chunk, coords.shape[0])
    latents = jax.tree.map(np.asarray, latents)
    outs = []
    for z, real in progress(padded_batches(latents, batch_size), desc=desc, unit="batch",
                            total=num_batches(latents.pose.shape[0], batch_size)):
        outs.append(np.asarray(decode_chunked(apply, params, coords, z, chunk))[:real])
    return np.concatenate(outs)


def predict_masks(apply: ApplyFn, params: Any, latents: Latents, shape: tuple[int, int],
                  **kwargs: Any) -> np.ndarray:
    """Flood probabilities ``(M, H, W)`` on the pixel grid of ``shape`` from a one-logit
    decoder (``kwargs`` as for :func:`decode_dataset`)."""
    logits = decode_dataset(apply, params, latents, coordinate_grid(*shape), **kwargs)
    if logits.shape[-1] != 1:
        raise ValueError(f"a mask decoder has one output channel, this one has "
                         f"{logits.shape[-1]}")
    return np.asarray(jax.nn.sigmoid(logits[..., 0])).reshape(-1, *shape)
