"""Classification metrics (NumPy, over a whole evaluation set)."""

from __future__ import annotations

import numpy as np


def _predictions(logits_or_preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class predictions ``(N,)`` (argmax of ``(N, K)`` logits) and labels ``(N,)``, checked."""
    scores, labels = np.asarray(logits_or_preds), np.asarray(labels)
    preds = scores.argmax(-1) if scores.ndim == 2 else scores
    if preds.ndim != 1 or labels.ndim != 1 or preds.shape != labels.shape:
        raise ValueError(f"expected logits (N, K) or predictions (N,) and labels (N,), got "
                         f"{scores.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    return preds, labels


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose predicted class (argmax of logits) equals the label."""
    preds, labels = _predictions(logits_or_preds, labels)
    return float(np.mean(preds == labels))


def confusion_matrix(logits_or_preds: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    preds, labels = _predictions(logits_or_preds, labels)
    for name, v in (("labels", labels), ("predictions", preds)):
        if v.min() < 0 or v.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{v.min()}, {v.max()}]")
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def per_class_accuracy(logits_or_preds: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """``(K,)`` recall of each class (NaN for a class without examples)."""
    cm = confusion_matrix(logits_or_preds, labels, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(1)
