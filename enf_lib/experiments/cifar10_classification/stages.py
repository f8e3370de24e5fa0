"""The stages of the CIFAR-10 classification experiment (see the package docstring)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enf_lib.classifiers import make_classifier, predict, train_classifier
from enf_lib.datasets import CIFAR10_CLASSES, load_cifar10
from enf_lib.experiments.cifar10_classification.config import CLASSIFIERS, Config
from enf_lib.experiments.runner import Run, to_jsonable
from enf_lib.experiments.stages import fit_latents_stage, record_loop, steps_done
from enf_lib.fitting import MetaLearner, MetaState
from enf_lib.geometry import get_bi_invariant
from enf_lib.latents import Latents
from enf_lib.metrics import accuracy, confusion_matrix, per_class_accuracy


def shift_images(images: np.ndarray, shift: int) -> np.ndarray:
    """Translate ``images (N, H, W, C)`` by ``shift`` pixels down and right (content moves by
    ``(shift, shift)``); the uncovered border repeats the nearest edge pixel."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift == 0:
        return images
    padded = np.pad(images, ((0, 0), (shift, 0), (shift, 0), (0, 0)), mode="edge")
    return padded[:, :images.shape[1], :images.shape[2]]


def load_data(cfg: Config) -> dict[str, np.ndarray]:
    """Train and test images (uint8) and labels of the configured sizes."""
    x_train, y_train = load_cifar10("train", limit=cfg.train_images)
    x_test, y_test = load_cifar10("test", limit=cfg.test_images)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def fit_split(run: Run, cfg: Config, learner: MetaLearner, state: MetaState, name: str,
              images: np.ndarray, score: bool = True) -> tuple[Latents, np.ndarray | None]:
    """Latents and PSNR (``None`` with ``score=False``) of ``images`` with the decoder of stage
    ``meta_train`` (cached as stage ``latents_<name>``)."""
    return fit_latents_stage(run, f"latents_{name}", learner, state, images,
                             data_id=("cifar10", name, len(images)), reads="meta_train",
                             seed=cfg.seed + 1, batch_size=cfg.fit_batch_size, score=score)


def train_classifiers(run: Run, cfg: Config, z_train: Latents, y_train: np.ndarray
                      ) -> dict[str, tuple[nnx.Module, Any]]:
    """Both classifiers trained on the normalised latents of stage ``latents_train``
    (checkpointed in the run)."""
    out = {}
    for i, kind in enumerate(CLASSIFIERS):
        name = f"classifier_{kind}"
        with run.stage(name) as record:
            model = make_classifier(kind, latent_dim=cfg.enf.latent_dim,
                                    bi_invariant=cfg.enf.bi_invariant, num_classes=10,
                                    cfg=cfg.classifier, rngs=nnx.Rngs(cfg.seed + 10 + i))
            folder = run.stage_dir(name, {"classifier": cfg.classifier, "kind": kind,
                                          "seed": cfg.seed}, reads=("latents_train",))
            done_before = steps_done(folder)
            model, log = train_classifier(model, z_train, y_train, cfg.classifier,
                                          jax.random.key(cfg.seed + 20 + i), num_classes=10,
                                          checkpoint_dir=folder,
                                          config={"classifier": to_jsonable(cfg.classifier),
                                                  "kind": kind},
                                          desc=f"classifier ({kind})")
            record_loop(record, log, done_before, cfg.classifier.steps)
            out[kind] = (model, log)
    return out


def evaluate(run: Run, models: dict[str, tuple[nnx.Module, Any]], z_test: Latents,
             y_test: np.ndarray) -> dict[str, Any]:
    """Test accuracy, per-class accuracy and confusion matrix of each classifier."""
    results: dict[str, Any] = {"test_accuracy": {}, "per_class_accuracy": {}, "confusion": {}}
    with run.stage("evaluate"):
        for kind, (model, _) in models.items():
            logits = predict(model, z_test)
            results["test_accuracy"][kind] = accuracy(logits, y_test)
            results["per_class_accuracy"][kind] = dict(zip(
                CIFAR10_CLASSES, per_class_accuracy(logits, y_test, 10).round(4)))
            results["confusion"][kind] = confusion_matrix(logits, y_test, 10)
    return results


def pixel_shift(bi_invariant: str, shift: int, size: int = 32) -> np.ndarray:
    """The group element translating the plane by ``shift`` pixels down and right on a
    ``size x size`` image: ``(2 shift / size, 2 shift / size)`` (plus angle 0 for SE(2))."""
    t = np.full(2, 2.0 * shift / size, np.float32)
    return t if get_bi_invariant(bi_invariant).group_dim == 2 else np.append(t, 0.0)


def shift_experiment(run: Run, cfg: Config, learner: MetaLearner, state: MetaState,
                     models: dict[str, tuple[nnx.Module, Any]], norm: Any,
                     data: dict[str, np.ndarray], z_test: Latents) -> dict[str, Any]:
    """How each classifier's test accuracy changes when the test images shift by each of
    ``cfg.shifts`` pixels (``z_test``: the latents of the unshifted test images).

    Two versions: ``shift_accuracy`` fits latents again to the shifted images (the real
    pipeline: fitting starts from the fixed grid, so the latents are only approximately shifted
    copies); ``shift_accuracy_latent`` translates the unshifted test latents by the same
    displacement (what exactly equivariant fitting would give, border effects aside).
    ``shift_accuracy_drop`` is the mean drop of the first over the shifts.
    """
    bi = get_bi_invariant(cfg.enf.bi_invariant)
    acc = {kind: [] for kind in models}
    acc_latent = {kind: [] for kind in models}
    for s in (0, *cfg.shifts):
        z = z_test if s == 0 else fit_split(run, cfg, learner, state, f"test_shift{s}",
                                            shift_images(data["x_test"], s), score=False)[0]
        moved = z_test.transform(bi, jnp.asarray(pixel_shift(bi.name, s)))
        for kind, (model, _) in models.items():
            acc[kind].append(accuracy(predict(model, norm(z)), data["y_test"]))
            acc_latent[kind].append(accuracy(predict(model, norm(moved)), data["y_test"]))
    drop = {k: v[0] - float(np.mean(v[1:])) if len(v) > 1 else 0.0 for k, v in acc.items()}
    return {"shift_pixels": [0, *cfg.shifts], "shift_accuracy": acc,
            "shift_accuracy_latent": acc_latent, "shift_accuracy_drop": drop}
