"""The stages of the CIFAR-10 diffusion experiment (see the package docstring), and the pieces
the notebook uses too."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from enf_lib import classifiers, metrics
from enf_lib.datasets import CIFAR10_CLASSES
from enf_lib.diffusion import DiT, check_tokens, flow_matching_loss_fn
from enf_lib.diffusion import sample as sample_tokens
from enf_lib.experiments.cifar10_diffusion.config import NUM_CLASSES, Config, DiffusionConfig
from enf_lib.experiments.runner import Run
from enf_lib.experiments.stages import (fit_latents_stage, meta_train_stage, record_loop,
                                        steps_done)
from enf_lib.fitting import MetaLearner, MetaState, psnr
from enf_lib.latents import ContextStats, Latents
from enf_lib.progress import progress
from enf_lib.sample_quality import nearest_distances
from enf_lib.training import train_model


def dit_optimizer(cfg: DiffusionConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``cfg.lr`` and cosine decay, gradients clipped at norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, cfg.steps - 1),
                                                  cfg.steps, end_value=0.1 * cfg.lr)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def train_dit_stage(run: Run, cfg: DiffusionConfig, tokens: np.ndarray, labels: np.ndarray,
                    poses: np.ndarray, *, reads: str, seed: int) -> tuple[DiT, Any]:
    """Train a :class:`~enf_lib.diffusion.DiT` on ``tokens (N, L, D)`` with ``labels (N,)`` and
    ``poses (N, L, pose_dim)`` by flow matching; checkpointed in the run (keyed by ``cfg``,
    ``seed`` and the stage ``reads`` that made the tokens) and returned with EMA weights, with
    its training log. ``cfg.dit.token_dim`` must be ``D``."""
    tokens = check_tokens(tokens)
    if cfg.dit.token_dim != tokens.shape[-1]:
        raise ValueError(f"dit.token_dim={cfg.dit.token_dim} but the tokens have "
                         f"{tokens.shape[-1]} entries")
    with run.stage("train_dit") as record:
        folder = run.stage_dir("train_dit", {"diffusion": cfg, "seed": seed}, reads=(reads,))
        done_before = steps_done(folder)
        model = DiT(cfg.dit, rngs=nnx.Rngs(seed))
        model, log = train_model(
            model, flow_matching_loss_fn(cfg.label_dropout),
            {"tokens": tokens, "labels": labels.astype(np.int32), "poses": poses},
            steps=cfg.steps, batch_size=min(cfg.batch_size, len(tokens)),
            optimizer=dit_optimizer(cfg), key=jax.random.key(seed + 1),
            ema_decay=cfg.ema_decay, checkpoint_dir=folder,
            config={"diffusion": dataclasses.asdict(cfg)},
            desc=f"train_dit ({run.experiment})")
        record_loop(record, log, done_before, cfg.steps)
    return model, log


def class_labels(per_class: int) -> np.ndarray:
    """``(10 per_class,)``: ``per_class`` copies of each class, class-major."""
    return np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)


def sampling_poses(learner: MetaLearner, key: jax.Array, num: int) -> Latents:
    """Fresh initial latents for ``num`` signals: their poses (grid plus the initial noise,
    the distribution the decoder was fitted at) and windows; contexts to be replaced."""
    return jax.tree.map(np.asarray, learner.init_latents(key, num))


def decode_tokens(learner: MetaLearner, state: MetaState, stats: ContextStats,
                  init: Latents, tokens: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Images ``(N, H, W, C)`` in ``[0, 1]`` of normalised contexts ``tokens (N, L, D)`` at the
    poses and windows of ``init``, decoded in chunks."""
    out = []
    for start in range(0, len(tokens), batch_size):
        part = jax.tree.map(lambda a: a[start:start + batch_size], init)
        z = stats.denormalize(part.replace(context=jnp.asarray(tokens[start:start + batch_size])))
        out.append(np.clip(np.asarray(learner.decode(state, z)), 0.0, 1.0))
    return np.concatenate(out)


def generate(model: DiT, key: jax.Array, labels: np.ndarray, poses: np.ndarray, *,
             num_steps: int, guidance_scale: float, method: str,
             snapshots: int = 0) -> dict[str, Any]:
    """Sample tokens for ``labels``, timing compilation and sampling separately.

    The step count is a traced value, so a one-step call on the same shapes compiles the very
    program the full call runs; its time (compiling, when needed, plus one step) is reported
    as ``compile_s``.

    Returns ``tokens (N, L, D)``, ``trajectory`` (with ``snapshots``), ``compile_s`` and
    ``seconds_per_image`` of the sampling call.
    """
    def call(k: jax.Array, steps: int) -> Any:
        out = sample_tokens(model, k, labels, poses, num_steps=steps,
                            guidance_scale=guidance_scale, method=method, snapshots=snapshots)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    call(key, 1)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = call(key, num_steps)
    timed = time.perf_counter() - t0
    tokens, traj = out if snapshots else (out, None)
    return {"tokens": np.asarray(tokens), "trajectory": None if traj is None else np.asarray(traj),
            "compile_s": compile_s, "seconds_per_image": timed / len(labels)}


def classifier_accuracy(model: Any, tokens: np.ndarray, init: Latents,
                        labels: np.ndarray) -> dict[str, Any]:
    """Accuracy (overall and per class) of a latent classifier on normalised contexts
    ``tokens (N, L, D)`` at the poses of ``init``."""
    logits = classifiers.predict(model, init.replace(context=tokens))
    per_class = metrics.per_class_accuracy(logits, labels, NUM_CLASSES)
    return {"accuracy": metrics.accuracy(logits, labels),
            "per_class": dict(zip(CIFAR10_CLASSES, per_class.tolist()))}


def pose_study(run: Run, c: Config, learner: MetaLearner, state: MetaState,
               train_images: np.ndarray, test_images: np.ndarray,
               psnr_fixed: np.ndarray, z_fixed: Latents) -> dict[str, float]:
    """What the fixed-pose decision costs and what it avoids, on the test images.

    A second decoder is meta-trained with moving poses (``lr_pose = pose_study_lr``). Returns
    mean test PSNRs: ``psnr_fixed`` (the experiment's decoder, fitted poses),
    ``psnr_moving`` (the other decoder at its fitted poses), ``psnr_moving_at_grid`` (its
    contexts decoded at fresh grid poses, as a sampler that generates only contexts would),
    ``psnr_fixed_at_fresh_poses`` (the fixed decoder's contexts at another draw of the initial
    pose noise), ``moving_minus_fixed`` and ``moving_minus_fixed_se``: the mean and standard
    error of the paired per-image difference of the first two (both decoders fit the same
    images), and ``moving_pose_shift_grid_spacings``: the mean displacement of the moving
    decoder's latents from a fresh grid draw, in grid spacings.
    """
    moving = learner.with_config(lr_pose=c.pose_study_lr)
    data_id = ("cifar10", "train", c.data.num_train)
    m_state, _ = meta_train_stage(run, moving, train_images, steps=c.meta_steps, seed=c.seed,
                                  data_id=data_id, name="meta_train_moving_poses")
    z_moving, psnr_moving = fit_latents_stage(
        run, "fit_test_moving_poses", moving, m_state, test_images, seed=c.seed + 2,
        data_id=("cifar10", "test", c.data.num_test), reads="meta_train_moving_poses",
        batch_size=c.fit_batch)
    target = test_images.astype(np.float32) / 255.0
    fresh = sampling_poses(learner, jax.random.key(c.seed + 3), len(test_images))

    def score(lrn: MetaLearner, st: MetaState, z: Latents) -> float:
        scores = [np.asarray(psnr(lrn.decode(st, jax.tree.map(lambda a: a[i:i + 500], z)),
                                  target[i:i + 500])) for i in range(0, len(target), 500)]
        return float(np.concatenate(scores).mean())

    gain = psnr_moving - psnr_fixed                     # (N,): the same test images
    spacing = 2.0 / np.sqrt(c.enf.num_latents)
    shift = np.linalg.norm(z_moving.position - fresh.position, axis=-1).mean() / spacing
    return {
        "psnr_fixed": float(psnr_fixed.mean()),
        "moving_minus_fixed": float(gain.mean()),
        "moving_minus_fixed_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
        "psnr_moving": float(psnr_moving.mean()),
        "psnr_moving_at_grid": score(moving, m_state, fresh.replace(context=z_moving.context)),
        "psnr_fixed_at_fresh_poses": score(learner, state,
                                           fresh.replace(context=z_fixed.context)),
        "moving_pose_shift_grid_spacings": float(shift),
    }


# ------------------------------------------------------------------------------------------
# The stages that run() chains
# ------------------------------------------------------------------------------------------


def train_enf(run: Run, c: Config, train_images: np.ndarray, test_images: np.ndarray
              ) -> tuple[MetaLearner, MetaState, dict[str, tuple[Latents, np.ndarray]]]:
    """Stages 1 and 2: the fixed-pose decoder (``meta_train``) and the latents and PSNR of
    both splits (``fit_train``, ``fit_test``)."""
    learner = MetaLearner(c.enf, c.fit, train_images.shape[1:3])
    state, _ = meta_train_stage(run, learner, train_images, steps=c.meta_steps, seed=c.seed,
                                data_id=("cifar10", "train", c.data.num_train))
    latents = {}
    for i, (split, images) in enumerate((("train", train_images), ("test", test_images))):
        latents[split] = fit_latents_stage(
            run, f"fit_{split}", learner, state, images, reads="meta_train",
            data_id=("cifar10", split, len(images)), seed=c.seed + 1 + i,
            batch_size=c.fit_batch)
    return learner, state, latents


def draw_samples(run: Run, c: Config, model: DiT, learner: MetaLearner, state: MetaState,
                 stats: ContextStats, key: jax.Array) -> dict[str, Any]:
    """Stage 4 (``sample``): ``sampling.per_class`` samples of each class at the reported
    guidance scale. Returns ``labels``, the initial latents ``init`` (poses and windows),
    ``tokens``, decoded ``images`` and the sampler's ``timing``."""
    s = c.sampling
    with run.stage("sample"):
        labels = class_labels(s.per_class)
        init = sampling_poses(learner, jax.random.fold_in(key, 0), len(labels))
        gen = generate(model, jax.random.fold_in(key, 1), labels, init.pose,
                       num_steps=s.num_steps, guidance_scale=s.guidance_scale, method=s.method)
        images = decode_tokens(learner, state, stats, init, gen["tokens"])
    timing = {"seconds_per_image": gen["seconds_per_image"], "compile_s": gen["compile_s"]}
    return {"labels": labels, "init": init, "tokens": gen["tokens"], "images": images,
            "timing": timing}


def trajectory(run: Run, c: Config, model: DiT, learner: MetaLearner, state: MetaState,
               stats: ContextStats, init: Latents, key: jax.Array) -> np.ndarray:
    """Decoded snapshots ``(T, 10, H, W, C)`` along one sample per class, noise to image,
    from the first initial latents of each class in ``init``."""
    s = c.sampling
    with run.stage("trajectory"):
        t_init = jax.tree.map(lambda a: a[::s.per_class], init)
        traj = generate(model, jax.random.fold_in(key, 2), class_labels(1), t_init.pose,
                        num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                        method=s.method, snapshots=s.snapshots)["trajectory"]
        return np.stack([decode_tokens(learner, state, stats, t_init, x) for x in traj])


def train_latent_classifier(run: Run, c: Config, z_train: Latents, labels: np.ndarray
                            ) -> nnx.Module:
    """Stage 5a (``classifier``): a latent classifier trained on the normalised training
    latents ``z_train`` of stage ``fit_train`` (checkpointed)."""
    ev = c.evaluation
    with run.stage("classifier") as record:
        folder = run.stage_dir("classifier", {"evaluation": ev, "seed": c.seed},
                               reads=("fit_train",))
        done_before = steps_done(folder)
        clf = classifiers.make_classifier(
            ev.classifier_kind, latent_dim=c.enf.latent_dim, bi_invariant=c.enf.bi_invariant,
            num_classes=NUM_CLASSES, cfg=ev.classifier, rngs=nnx.Rngs(c.seed))
        clf, log = classifiers.train_classifier(
            clf, z_train, labels, ev.classifier, jax.random.key(c.seed + 4),
            num_classes=NUM_CLASSES, checkpoint_dir=folder,
            config={"classifier": dataclasses.asdict(ev.classifier)},
            desc=f"classifier ({run.experiment})")
        record_loop(record, log, done_before, ev.classifier.steps)
    return clf


def guidance_sweep(run: Run, c: Config, model: DiT, clf: nnx.Module, learner: MetaLearner,
                   state: MetaState, stats: ContextStats, key: jax.Array
                   ) -> tuple[dict[float, float], dict[float, np.ndarray]]:
    """Stage 5b (``guidance_sweep``): the classifier's accuracy on samples at each scale of
    ``sampling.guidance_sweep``, and one decoded sample per class ``(10, H, W, C)`` at each."""
    s = c.sampling
    with run.stage("guidance_sweep"):
        labels = class_labels(s.sweep_per_class)
        init = sampling_poses(learner, jax.random.fold_in(key, 3), len(labels))
        first = jax.tree.map(lambda a: a[::s.sweep_per_class], init)
        acc, images = {}, {}
        for w in progress(s.guidance_sweep, desc="guidance sweep"):
            tokens = np.asarray(sample_tokens(model, jax.random.fold_in(key, 4), labels,
                                              init.pose, num_steps=s.num_steps,
                                              guidance_scale=w, method=s.method))
            acc[w] = classifier_accuracy(clf, tokens, init, labels)["accuracy"]
            images[w] = decode_tokens(learner, state, stats, first,
                                      tokens[::s.sweep_per_class])
    return acc, images


def memorisation(run: Run, c: Config, samples: dict[str, Any], tokens: dict[str, np.ndarray],
                 train_images: np.ndarray, test_images: np.ndarray
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Stage 5c (``nearest_neighbours``): distances of ``evaluation.nn_samples`` samples, and
    of as many test images, to their nearest training image (pixels) and training latent
    (normalised contexts ``tokens["train"]``, ``tokens["test"]``), and whether samples sit
    nearer to training images than to unseen ones. Returns the summary, ten samples' indices
    into ``samples["images"]`` and the indices of their nearest training images."""
    images = samples["images"]
    with run.stage("nearest_neighbours"):
        n = min(c.evaluation.nn_samples, len(images), len(test_images))
        pick = np.linspace(0, len(images) - 1, n).astype(int)
        train_float = train_images.astype(np.float32) / 255.0
        test_float = test_images.astype(np.float32) / 255.0
        d_gen, idx_gen = nearest_distances(images[pick], train_float)
        d_test, _ = nearest_distances(test_float[:n], train_float)
        l_gen, _ = nearest_distances(samples["tokens"][pick], tokens["train"])
        l_test, _ = nearest_distances(tokens["test"][:n], tokens["train"])
        # Memorisation: is a sample nearer to training images than to unseen images?
        d_seen, _ = nearest_distances(images[pick], train_float[:len(test_float)])
        d_unseen, _ = nearest_distances(images[pick], test_float)
    summary = {
        "num": n, "pixel_median_generated": float(np.median(d_gen)),
        "pixel_median_test": float(np.median(d_test)),
        "latent_median_generated": float(np.median(l_gen)),
        "latent_median_test": float(np.median(l_test)),
        "pixel_min_generated": float(d_gen.min()), "pixel_min_test": float(d_test.min()),
        "pixel_median_ratio_train_to_test": float(np.median(d_seen / d_unseen))}
    every = max(1, n // 10)
    return summary, pick[::every][:10], idx_gen[::every][:10]
