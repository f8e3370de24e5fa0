"""CIFAR-10 classification from ENF latents.

Stages (each cached in the run folder, see :mod:`enf_lib.experiments.runner`):

1. ``meta_train``: meta-learn the ENF on the training images (checkpointed, resumable).
2. ``latents_train`` / ``latents_test``: fit latents to every image with the frozen ENF; context
   statistics come from the training latents only.
3. ``classifier_transformer`` / ``classifier_invariant``: train both latent classifiers
   (:mod:`enf_lib.classifiers`).
4. ``evaluate``: test accuracy, per-class accuracy and confusion matrices.
5. ``shifts``: shift the test images by a few pixels, fit their latents again and measure how
   each classifier's accuracy changes (what equivariance buys).

Command line: ``python -m enf_lib.experiments cifar10-classification --profile quick --out DIR``.
"""

from __future__ import annotations

from typing import Annotated, Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pydantic.dataclasses
from flax import nnx
from pydantic import Field, NonNegativeInt, PositiveInt

from enf_lib.classifiers import ClassifierConfig, make_classifier, predict, train_classifier
from enf_lib.config import STRICT, ENFConfig, FitConfig
from enf_lib.datasets import CIFAR10_CLASSES, load_cifar10
from enf_lib.experiments.runner import Run, to_jsonable
from enf_lib.experiments.stages import (fit_latents_stage, meta_train_stage, record_loop,
                                        steps_done)
from enf_lib.fitting import MetaLearner, MetaState
from enf_lib.geometry import get_bi_invariant
from enf_lib.latents import ContextStats, Latents
from enf_lib.metrics import accuracy, confusion_matrix, per_class_accuracy
from enf_lib.plotting import plot_history, plot_latents

CLASSIFIERS = ("transformer", "invariant")


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The whole experiment.

    Attributes:
      enf, fit: the decoder and its meta-learning.
      classifier: both classifiers' architecture and training.
      train_images, test_images: how many images of each split (``None`` = all); prefixes of
        the class-interleaved splits, so class-balanced.
      meta_steps: outer steps of meta-learning.
      fit_batch_size: images fitted at once when computing latents.
      shifts: pixel shifts (applied along both axes) of the invariance experiment.
      seed: of everything random.
    """

    enf: ENFConfig
    fit: FitConfig
    classifier: ClassifierConfig
    train_images: Annotated[int, Field(ge=10)] | None = None
    test_images: Annotated[int, Field(ge=10)] | None = None
    meta_steps: NonNegativeInt = 1000
    fit_batch_size: PositiveInt = 256
    shifts: tuple[Annotated[int, Field(ge=1, le=16)], ...] = (1, 2, 3, 4)
    seed: int = 0


PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: a small ENF, a tenth of the training set. Second order with
    # 256 of the 1,024 pixels per inner step and all of them in the outer loss. At the former
    # profile's run time it beats 500 first-order steps on 256/512-pixel subsets (test PSNR 22.1
    # against 19.4 dB, 40.9/40.1 % against 37.2/33.8 %; 39.3/41.6 % once train_model's epochs
    # were fixed); benchmarks/README.md.
    "quick": Config(
        enf=ENFConfig(num_latents=16, latent_dim=32, hidden_dim=64, att_dim=32, num_heads=2,
                      num_freqs=32),
        fit=FitConfig(batch_size=8, outer_lr=2e-3, inner_coords=256),
        classifier=ClassifierConfig(dim=64, depth=2, num_heads=4, steps=300, batch_size=128,
                                    lr=2e-3),
        train_images=5_000, test_images=1_000, meta_steps=220, shifts=(1, 2, 4)),
    # One H100-class GPU, under 8 minutes: the reference ENF, all data, second order.
    "standard": Config(
        enf=ENFConfig(),
        fit=FitConfig(batch_size=32),
        classifier=ClassifierConfig(dim=128, depth=4, num_heads=4, steps=4000, batch_size=256),
        meta_steps=3000, fit_batch_size=1024),
    # Paper scale: 10 epochs of ENF meta-learning (15,625 steps at batch 32), a larger classifier.
    "full": Config(
        enf=ENFConfig(),
        fit=FitConfig(batch_size=32),
        classifier=ClassifierConfig(dim=256, depth=6, num_heads=8, steps=10_000,
                                    batch_size=256, lr=5e-4),
        meta_steps=15_625, fit_batch_size=1024),
}


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


def enf_deps(cfg: Config, n_train: int) -> tuple[Any, ...]:
    """What identifies the trained ENF (the cache key of everything computed with it)."""
    return (cfg.enf, cfg.fit, ("cifar10", "train", n_train), cfg.seed, cfg.meta_steps)


def fit_split(run: Run, cfg: Config, learner: MetaLearner, state: MetaState, name: str,
              images: np.ndarray, n_train: int,
              score: bool = True) -> tuple[Latents, np.ndarray | None]:
    """Latents and PSNR (``None`` with ``score=False``) of ``images`` (cached as stage
    ``latents_<name>``)."""
    deps = (*enf_deps(cfg, n_train), ("cifar10", name, len(images)))
    return fit_latents_stage(run, f"latents_{name}", learner, state, images, deps=deps,
                             seed=cfg.seed + 1, batch_size=cfg.fit_batch_size, score=score)


def train_classifiers(run: Run, cfg: Config, z_train: Latents, y_train: np.ndarray,
                      n_train: int) -> dict[str, tuple[nnx.Module, Any]]:
    """Both classifiers trained on normalised training latents (checkpointed in the run)."""
    out = {}
    for i, kind in enumerate(CLASSIFIERS):
        with run.stage(f"classifier_{kind}") as record:
            model = make_classifier(kind, latent_dim=cfg.enf.latent_dim,
                                    bi_invariant=cfg.enf.bi_invariant, num_classes=10,
                                    cfg=cfg.classifier, rngs=nnx.Rngs(cfg.seed + 10 + i))
            folder = run.stage_dir(f"classifier_{kind}", *enf_deps(cfg, n_train),
                                   cfg.classifier, kind)
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


def run(cfg: Config, run: Run) -> dict[str, Any]:
    """Every stage; writes ``metrics.json`` and figures into ``run.out`` and returns the metrics."""
    with run.stage("load_data"):
        data = load_data(cfg)
    run.use_data(*data.values())
    n_train = len(data["x_train"])
    learner = MetaLearner(cfg.enf, cfg.fit, (32, 32))
    state, enf_log = meta_train_stage(run, learner, data["x_train"], steps=cfg.meta_steps,
                                      seed=cfg.seed, data_id=("cifar10", "train", n_train))
    z_train, psnr_train = fit_split(run, cfg, learner, state, "train", data["x_train"], n_train)
    z_test, psnr_test = fit_split(run, cfg, learner, state, "test", data["x_test"], n_train)
    stats = ContextStats.from_latents(z_train)
    norm = lambda z: jax.tree.map(np.asarray, stats.normalize(z))
    models = train_classifiers(run, cfg, norm(z_train), data["y_train"], n_train)

    results: dict[str, Any] = evaluate(run, models, norm(z_test), data["y_test"])
    results.update(test_psnr=float(psnr_test.mean()), train_psnr=float(psnr_train.mean()),
                   num_train=n_train, num_test=len(data["x_test"]))
    results.update(shift_experiment(run, cfg, learner, state, models, norm, data, n_train))

    figures = {"confusion": confusion_figure(results),
               "shift_accuracy": shift_figure(results),
               "latents": latents_figure(data["x_test"], data["y_test"], z_test)}
    if cfg.meta_steps:
        figures["enf_training"] = plot_history(enf_log.history)
    for name, fig in figures.items():
        run.save_figure(fig, name)
        plt.close(fig)
    return run.write_metrics(results)


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
                     data: dict[str, np.ndarray], n_train: int) -> dict[str, Any]:
    """How each classifier's test accuracy changes when the test images shift by each of
    ``cfg.shifts`` pixels.

    Two versions: ``shift_accuracy`` fits latents again to the shifted images (the real
    pipeline: fitting starts from the fixed grid, so the latents are only approximately shifted
    copies); ``shift_accuracy_latent`` translates the unshifted test latents by the same
    displacement (what exactly equivariant fitting would give, border effects aside).
    ``shift_accuracy_drop`` is the mean drop of the first over the shifts.
    """
    bi = get_bi_invariant(cfg.enf.bi_invariant)
    acc = {kind: [] for kind in models}
    acc_latent = {kind: [] for kind in models}
    z_test = None
    for s in (0, *cfg.shifts):
        z, _ = fit_split(run, cfg, learner, state, f"test_shift{s}" if s else "test",
                         shift_images(data["x_test"], s), n_train, score=s == 0)
        z_test = z if s == 0 else z_test
        moved = z_test.transform(bi, jnp.asarray(pixel_shift(bi.name, s)))
        for kind, (model, _) in models.items():
            acc[kind].append(accuracy(predict(model, norm(z)), data["y_test"]))
            acc_latent[kind].append(accuracy(predict(model, norm(moved)), data["y_test"]))
    drop = {k: v[0] - float(np.mean(v[1:])) if len(v) > 1 else 0.0 for k, v in acc.items()}
    return {"shift_pixels": [0, *cfg.shifts], "shift_accuracy": acc,
            "shift_accuracy_latent": acc_latent, "shift_accuracy_drop": drop}


def shift_figure(results: dict[str, Any]) -> plt.Figure:
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
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3))
    for i, ax in enumerate(axes):
        plot_latents(ax, images[i] / 255.0, jax.tree.map(lambda a: a[i], z))
        ax.set_title(CIFAR10_CLASSES[labels[i]], fontsize=9)
    fig.tight_layout()
    return fig


def confusion_figure(results: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, kind in zip(axes, CLASSIFIERS):
        cm = np.asarray(results["confusion"][kind], float)
        ax.imshow(cm / cm.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(10), CIFAR10_CLASSES, rotation=90, fontsize=8)
        ax.set_yticks(range(10), CIFAR10_CLASSES, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{kind}: {100 * results['test_accuracy'][kind]:.1f} %")
    fig.tight_layout()
    return fig
