"""Generating CIFAR-10 images by flow matching in ENF latent space.

Stages (each cached in the run folder):

1. ``meta_train``: meta-learn the ENF decoder on the training images, with **fixed poses**
   (``fit.lr_pose = 0``): every latent keeps its initial grid pose, so the poses the sampler
   uses are exactly those the decoder was trained and fitted with.
2. ``fit_train``, ``fit_test``: latents for the training images and for test images (their
   PSNR is the reconstruction quality); ``pose_study`` (optional) measures what moving poses
   would cost: a second decoder fitted with moving poses, decoded at its fitted poses and at
   fresh grid poses.
3. ``train_dit``: a diffusion transformer (:mod:`enf_lib.diffusion`) learns the flow from noise
   to the normalised contexts, conditioned on class and on the (grid) poses, with an EMA.
4. ``sample``: class-conditional contexts with classifier-free guidance, decoded to images.
5. ``evaluate``: a latent classifier trained on real training latents, applied to generated
   latents (per class) and to real test latents; nearest-training-neighbour distances of the
   samples and of test images, in pixel and latent space; FID when its network is available.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pydantic.dataclasses
from flax import nnx
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from enf_lib import classifiers, metrics
from enf_lib.config import STRICT, ENFConfig, FitConfig
from enf_lib.datasets import CIFAR10_CLASSES, load_cifar10
from enf_lib.diffusion import DiT, DiTConfig, Method, check_tokens, flow_matching_loss_fn
from enf_lib.diffusion import sample as sample_tokens
from enf_lib.experiments.runner import Run
from enf_lib.experiments.stages import fit_latents_stage, meta_train_stage, record_loop
from enf_lib.experiments.stages import steps_done
from enf_lib.fitting import MetaLearner, MetaState, psnr
from enf_lib.latents import ContextStats, Latents
from enf_lib.model import count_params
from enf_lib.plotting import image_grid
from enf_lib.progress import progress
from enf_lib.training import train_model

NUM_CLASSES = len(CIFAR10_CLASSES)


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class DataConfig:
    """How many CIFAR-10 images each stage uses (class-balanced prefixes, at least one image per
    class)."""

    num_train: Annotated[int, Field(ge=NUM_CLASSES)] = 50_000
    num_test: Annotated[int, Field(ge=NUM_CLASSES)] = 10_000


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class DiffusionConfig:
    """The diffusion transformer and its training (AdamW, warm-up, EMA).

    ``dit.token_dim`` is replaced by ``enf.latent_dim`` (one token per latent: its context),
    see :meth:`Config.dit`.
    """

    dit: DiTConfig = DiTConfig()
    steps: PositiveInt = 20_000
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 3e-4
    warmup: NonNegativeInt = 500
    weight_decay: NonNegativeFloat = 0.0
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    label_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SamplingConfig:
    """Class-conditional sampling and the figures made from it.

    Attributes:
      per_class: samples per class for the metrics.
      num_steps, method: integration steps and method (``euler`` or ``heun``).
      guidance_scale: CFG scale of the reported samples.
      guidance_sweep: scales compared (classifier accuracy and a figure).
      sweep_per_class: samples per class at each scale of the sweep.
      snapshots: states kept along the noise-to-image trajectory figure (at least 2).
    """

    per_class: PositiveInt = 1000
    num_steps: PositiveInt = 100
    method: Method = "euler"
    guidance_scale: float = 2.0
    guidance_sweep: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    sweep_per_class: PositiveInt = 100
    snapshots: Annotated[int, Field(ge=2)] = 8


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class EvalConfig:
    """Offline sample quality.

    Attributes:
      classifier_kind, classifier: the latent classifier trained on real training latents.
      nn_samples: samples (and test images) whose nearest training neighbours are searched.
      fid: compute FID against the test images when the Inception weights are available.
    """

    classifier_kind: classifiers.Kind = "transformer"
    classifier: classifiers.ClassifierConfig = classifiers.ClassifierConfig()
    nn_samples: PositiveInt = 1000
    fid: bool = True


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The experiment; ``meta_steps`` outer steps of ENF meta-learning, then the DiT.

    ``pose_study``: also meta-train a decoder with moving poses (``fit.lr_pose`` replaced by
    ``pose_study_lr``) and measure what sampling at grid poses would cost it.
    """

    data: DataConfig = DataConfig()
    enf: ENFConfig = ENFConfig(num_latents=64, latent_dim=16)
    fit: FitConfig = FitConfig(batch_size=64, lr_pose=0.0)
    meta_steps: PositiveInt = 1_563
    fit_batch: PositiveInt = 256
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()
    evaluation: EvalConfig = EvalConfig()
    pose_study: bool = False
    pose_study_lr: PositiveFloat = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.diffusion.dit.num_classes != NUM_CLASSES:
            raise ValueError(f"diffusion.dit.num_classes must be {NUM_CLASSES}")
        if self.fit.lr_pose != 0 or self.fit.lr_window != 0:
            raise ValueError("fit.lr_pose and fit.lr_window must be 0 (the sampler generates "
                             "contexts at the fixed initial poses)")

    @property
    def dit(self) -> DiTConfig:
        """The DiT of ``diffusion.dit`` with one token entry per context entry."""
        return dataclasses.replace(self.diffusion.dit, token_dim=self.enf.latent_dim)


_SMALL_ENF = ENFConfig(num_latents=16, latent_dim=16, hidden_dim=64, att_dim=32, num_heads=2,
                       num_freqs=32)
_SMALL_FIT = FitConfig(batch_size=8, second_order=False, outer_lr=1e-3, inner_coords=256,
                       outer_coords=512, lr_pose=0.0)

PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: small ENF and DiT on 2,000 images.
    "quick": Config(
        data=DataConfig(num_train=1_500, num_test=500),
        enf=_SMALL_ENF, fit=_SMALL_FIT, meta_steps=300, fit_batch=250,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=96, depth=3, num_heads=4, mlp_ratio=2),
            steps=1_200, batch_size=128, lr=1e-3, warmup=100, ema_decay=0.99),
        sampling=SamplingConfig(per_class=50, num_steps=40, guidance_sweep=(0.0, 1.0, 2.0, 4.0),
                                sweep_per_class=20, snapshots=7),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(
            dim=64, depth=2, num_heads=4, steps=500, batch_size=128, lr=1e-3, warmup=50),
            nn_samples=200),
        pose_study=True),
    # One H100, under 8 minutes: the reference ENF (64 x 16) on 10,000 images, a 20M DiT.
    "standard": Config(
        data=DataConfig(num_train=10_000, num_test=2_000),
        enf=ENFConfig(num_latents=64, latent_dim=16),
        fit=FitConfig(batch_size=64, second_order=False, inner_coords=512, outer_coords=1024,
                      lr_pose=0.0),
        meta_steps=1_000, fit_batch=500,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=384, depth=8, num_heads=6),
            steps=8_000, batch_size=256, lr=3e-4, warmup=500, ema_decay=0.999),
        sampling=SamplingConfig(per_class=200, num_steps=100, sweep_per_class=100),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(steps=3_000),
                              nn_samples=1_000),
        pose_study=False),
    # Paper scale: all 50,000 images, 2 ENF epochs (second order, batch 64) and 30 DiT
    # epochs of a DiT-B-sized transformer (width 768, depth 12: about 130M parameters).
    "full": Config(
        data=DataConfig(num_train=50_000, num_test=10_000),
        enf=ENFConfig(num_latents=64, latent_dim=16),
        fit=FitConfig(batch_size=64, second_order=True, lr_pose=0.0),
        meta_steps=1_563, fit_batch=500,
        diffusion=DiffusionConfig(
            dit=DiTConfig(width=768, depth=12, num_heads=12),
            steps=11_720, batch_size=128, lr=1e-4, warmup=1_000, ema_decay=0.9999),
        # 50,000 generated samples, as for the published FIDs.
        sampling=SamplingConfig(per_class=5_000, num_steps=100, sweep_per_class=200),
        evaluation=EvalConfig(classifier=classifiers.ClassifierConfig(steps=20_000),
                              nn_samples=2_000),
        pose_study=False),
}


# ------------------------------------------------------------------------------------------
# Pieces the notebook uses too
# ------------------------------------------------------------------------------------------


def dit_optimizer(cfg: DiffusionConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``cfg.lr`` and cosine decay, gradients clipped at norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, cfg.steps - 1),
                                                  cfg.steps, end_value=0.1 * cfg.lr)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def train_dit_stage(run: Run, cfg: DiffusionConfig, tokens: np.ndarray, labels: np.ndarray,
                    poses: np.ndarray, *, deps: Any, seed: int) -> tuple[DiT, Any]:
    """Train a :class:`~enf_lib.diffusion.DiT` on ``tokens (N, L, D)`` with ``labels (N,)`` and
    ``poses (N, L, pose_dim)`` by flow matching; checkpointed in the run (keyed by ``deps``,
    which must identify the data) and returned with EMA weights, with its training log.
    ``cfg.dit.token_dim`` must be ``D``."""
    tokens = check_tokens(tokens)
    if cfg.dit.token_dim != tokens.shape[-1]:
        raise ValueError(f"dit.token_dim={cfg.dit.token_dim} but the tokens have "
                         f"{tokens.shape[-1]} entries")
    with run.stage("train_dit") as record:
        folder = run.stage_dir("train_dit", cfg, deps, seed)
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


def classifier_accuracy(model: Any, tokens: np.ndarray, init: Latents,
                        labels: np.ndarray) -> dict[str, Any]:
    """Accuracy (overall and per class) of a latent classifier on normalised contexts
    ``tokens (N, L, D)`` at the poses of ``init``."""
    logits = classifiers.predict(model, init.replace(context=tokens))
    per_class = metrics.per_class_accuracy(logits, labels, NUM_CLASSES)
    return {"accuracy": metrics.accuracy(logits, labels),
            "per_class": dict(zip(CIFAR10_CLASSES, per_class.tolist()))}


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


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------


def sample_grid_figure(images: np.ndarray, labels: np.ndarray, per_row: int) -> plt.Figure:
    """One row per class: the first ``per_row`` images of that class."""
    rows = [images[labels == c][:per_row] for c in range(NUM_CLASSES)]
    return image_grid(rows, row_labels=list(CIFAR10_CLASSES), size=0.9)


def trajectory_figure(frames: np.ndarray, times: np.ndarray,
                      labels: np.ndarray) -> plt.Figure:
    """``frames (T, N, H, W, C)``: one row per sample, one column per time."""
    rows = [frames[:, i] for i in range(frames.shape[1])]
    return image_grid(rows, row_labels=[CIFAR10_CLASSES[c] for c in labels],
                      titles=[f"t = {t:.2f}" for t in times], size=0.9)


def guidance_figure(images: dict[float, np.ndarray], accuracy: dict[float, float]
                    ) -> plt.Figure:
    """One row per guidance scale (``images[w] (10, H, W, C)``, one per class)."""
    scales = sorted(images)
    fig = image_grid([images[w] for w in scales], titles=list(CIFAR10_CLASSES), size=0.9,
                     row_labels=[f"w={w:g}\nacc {accuracy[w]:.0%}" for w in scales])
    return fig


def neighbours_figure(samples: np.ndarray, neighbours: np.ndarray) -> plt.Figure:
    """Samples (top row) above their nearest training images (bottom row)."""
    return image_grid([samples, neighbours], row_labels=["sample", "nearest\ntrain"],
                      size=0.9)


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------


def pose_study(run: Run, c: Config, learner: MetaLearner, state: MetaState,
               train_images: np.ndarray, test_images: np.ndarray,
               psnr_fixed: np.ndarray, z_fixed: Latents) -> dict[str, float]:
    """What the fixed-pose decision costs and what it avoids, on the test images.

    A second decoder is meta-trained with moving poses (``lr_pose = pose_study_lr``). Returns
    mean test PSNRs: ``psnr_fixed`` (the experiment's decoder, fitted poses),
    ``psnr_moving`` (the other decoder at its fitted poses), ``psnr_moving_at_grid`` (its
    contexts decoded at fresh grid poses, as a sampler that generates only contexts would),
    ``psnr_fixed_at_fresh_poses`` (the fixed decoder's contexts at another draw of the initial
    pose noise), and ``moving_pose_shift_grid_spacings``: the mean displacement of the moving
    decoder's latents from a fresh grid draw, in grid spacings.
    """
    moving = learner.with_config(lr_pose=c.pose_study_lr)
    data_id = ("cifar10", "train", c.data.num_train)
    m_state, _ = meta_train_stage(run, moving, train_images, steps=c.meta_steps, seed=c.seed,
                                  data_id=data_id, name="meta_train_moving_poses")
    z_moving, psnr_moving = fit_latents_stage(
        run, "fit_test_moving_poses", moving, m_state, test_images, seed=c.seed + 2,
        deps=(c.enf, moving.cfg, data_id, c.meta_steps, c.seed, "test", c.data.num_test),
        batch_size=c.fit_batch)
    target = test_images.astype(np.float32) / 255.0
    fresh = sampling_poses(learner, jax.random.key(c.seed + 3), len(test_images))

    def score(lrn: MetaLearner, st: MetaState, z: Latents) -> float:
        scores = [np.asarray(psnr(lrn.decode(st, jax.tree.map(lambda a: a[i:i + 500], z)),
                                  target[i:i + 500])) for i in range(0, len(target), 500)]
        return float(np.concatenate(scores).mean())

    spacing = 2.0 / np.sqrt(c.enf.num_latents)
    shift = np.linalg.norm(z_moving.position - fresh.position, axis=-1).mean() / spacing
    return {
        "psnr_fixed": float(psnr_fixed.mean()),
        "psnr_moving": float(psnr_moving.mean()),
        "psnr_moving_at_grid": score(moving, m_state, fresh.replace(context=z_moving.context)),
        "psnr_fixed_at_fresh_poses": score(learner, state,
                                           fresh.replace(context=z_fixed.context)),
        "moving_pose_shift_grid_spacings": float(shift),
    }


def run(config: Config, run: Run) -> dict[str, Any]:
    """All stages; returns what ``metrics.json`` holds (see the module docstring)."""
    c = config
    train_images, train_labels = load_cifar10("train", limit=c.data.num_train)
    test_images, test_labels = load_cifar10("test", limit=c.data.num_test)
    run.use_data(train_images, train_labels, test_images, test_labels)
    learner = MetaLearner(c.enf, c.fit, train_images.shape[1:3])
    data_id = ("cifar10", "train", c.data.num_train)

    # Stages 1 and 2: the ENF and the latents.
    state, _ = meta_train_stage(run, learner, train_images, steps=c.meta_steps, seed=c.seed,
                                data_id=data_id)
    enf_deps = (c.enf, c.fit, data_id, c.meta_steps, c.seed)
    z_train, psnr_train = fit_latents_stage(
        run, "fit_train", learner, state, train_images, deps=(*enf_deps, "train"),
        seed=c.seed + 1, batch_size=c.fit_batch)
    z_test, psnr_test = fit_latents_stage(
        run, "fit_test", learner, state, test_images,
        deps=(*enf_deps, "test", c.data.num_test), seed=c.seed + 2, batch_size=c.fit_batch)
    results: dict[str, Any] = {
        "recon_psnr_test": float(psnr_test.mean()), "recon_psnr_train": float(psnr_train.mean()),
        "num_train": c.data.num_train, "num_test": c.data.num_test}
    if c.pose_study:
        results["pose_study"] = pose_study(run, c, learner, state, train_images, test_images,
                                           psnr_test, z_test)

    # Stage 3: the DiT on normalised contexts, conditioned on class and pose.
    stats = ContextStats.from_latents(z_train)
    train_tokens = np.asarray(stats.normalize(z_train).context)
    test_tokens = np.asarray(stats.normalize(z_test).context)
    dit_cfg = dataclasses.replace(c.diffusion, dit=c.dit)
    model, dit_log = train_dit_stage(run, dit_cfg, train_tokens, train_labels,
                                     z_train.pose, deps=(*enf_deps, "train"), seed=c.seed)
    results["dit_params"] = count_params(model)
    results["dit_final_loss"] = dit_log.history["loss"][-1][1]

    # Stage 4: class-conditional samples, decoded.
    s, key = c.sampling, jax.random.key(c.seed + 10)
    with run.stage("sample"):
        labels = class_labels(s.per_class)
        init = sampling_poses(learner, jax.random.fold_in(key, 0), len(labels))
        gen = generate(model, jax.random.fold_in(key, 1), labels, init.pose,
                       num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                       method=s.method)
        images = decode_tokens(learner, state, stats, init, gen["tokens"])
    results["sampling"] = {
        "num_samples": len(labels), "num_steps": s.num_steps, "method": s.method,
        "guidance_scale": s.guidance_scale, "seconds_per_image": gen["seconds_per_image"],
        "compile_s": gen["compile_s"]}
    run.save_figure(sample_grid_figure(images, labels, per_row=10), "samples")

    with run.stage("trajectory"):
        t_labels = class_labels(1)
        t_init = jax.tree.map(lambda a: a[::s.per_class], init)
        traj = generate(model, jax.random.fold_in(key, 2), t_labels, t_init.pose,
                        num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                        method=s.method, snapshots=s.snapshots)["trajectory"]
        frames = np.stack([decode_tokens(learner, state, stats, t_init, x) for x in traj])
    run.save_figure(trajectory_figure(frames, np.linspace(0, 1, s.snapshots), t_labels),
                    "trajectory")

    # Stage 5: offline quality.
    ev = c.evaluation
    with run.stage("classifier") as record:
        folder = run.stage_dir("classifier", ev, enf_deps)
        done_before = steps_done(folder)
        clf = classifiers.make_classifier(
            ev.classifier_kind, latent_dim=c.enf.latent_dim, bi_invariant=c.enf.bi_invariant,
            num_classes=NUM_CLASSES, cfg=ev.classifier, rngs=nnx.Rngs(c.seed))
        clf, clf_log = classifiers.train_classifier(
            clf, stats.normalize(z_train), train_labels, ev.classifier,
            jax.random.key(c.seed + 4), num_classes=NUM_CLASSES, checkpoint_dir=folder,
            config={"classifier": dataclasses.asdict(ev.classifier)},
            desc=f"classifier ({run.experiment})")
        record_loop(record, clf_log, done_before, ev.classifier.steps)
    real = classifier_accuracy(clf, test_tokens, z_test, test_labels)
    fake = classifier_accuracy(clf, gen["tokens"], init, labels)
    results["classifier"] = {"kind": ev.classifier_kind, "accuracy_real_test": real["accuracy"],
                             "per_class_real_test": real["per_class"],
                             "accuracy_generated": fake["accuracy"],
                             "per_class_generated": fake["per_class"]}

    with run.stage("guidance_sweep"):
        sweep_labels = class_labels(s.sweep_per_class)
        sweep_init = sampling_poses(learner, jax.random.fold_in(key, 3), len(sweep_labels))
        sweep_acc, sweep_images = {}, {}
        for w in progress(s.guidance_sweep, desc="guidance sweep"):
            tokens = np.asarray(sample_tokens(model, jax.random.fold_in(key, 4), sweep_labels,
                                              sweep_init.pose, num_steps=s.num_steps,
                                              guidance_scale=w, method=s.method))
            sweep_acc[w] = classifier_accuracy(clf, tokens, sweep_init,
                                               sweep_labels)["accuracy"]
            first = jax.tree.map(lambda a: a[::s.sweep_per_class], sweep_init)
            sweep_images[w] = decode_tokens(learner, state, stats, first,
                                            tokens[::s.sweep_per_class])
    results["guidance_sweep"] = {f"{w:g}": a for w, a in sweep_acc.items()}
    run.save_figure(guidance_figure(sweep_images, sweep_acc), "guidance")

    with run.stage("nearest_neighbours"):
        n = min(ev.nn_samples, len(images), len(test_images))
        pick = np.linspace(0, len(images) - 1, n).astype(int)
        train_float = train_images.astype(np.float32) / 255.0
        d_gen, idx_gen = nearest_distances(images[pick], train_float)
        test_float = test_images.astype(np.float32) / 255.0
        d_test, _ = nearest_distances(test_float[:n], train_float)
        l_gen, _ = nearest_distances(gen["tokens"][pick], train_tokens)
        l_test, _ = nearest_distances(test_tokens[:n], train_tokens)
        # Memorisation: is a sample nearer to training images than to unseen images?
        d_seen, _ = nearest_distances(images[pick], train_float[:len(test_float)])
        d_unseen, _ = nearest_distances(images[pick], test_float)
    results["nearest_neighbours"] = {
        "num": n, "pixel_median_generated": float(np.median(d_gen)),
        "pixel_median_test": float(np.median(d_test)),
        "latent_median_generated": float(np.median(l_gen)),
        "latent_median_test": float(np.median(l_test)),
        "pixel_min_generated": float(d_gen.min()), "pixel_min_test": float(d_test.min()),
        "pixel_median_ratio_train_to_test": float(np.median(d_seen / d_unseen))}
    show = pick[:: max(1, n // 10)][:10]
    run.save_figure(neighbours_figure(images[show],
                                      train_float[idx_gen[:: max(1, n // 10)][:10]]),
                    "neighbours")

    fid, note = (None, "disabled in the config")
    if ev.fid:
        with run.stage("fid"):
            fid, note = fid_or_none(images, test_float)
        run.log(f"[{run.experiment}] FID: {note}")
    # FID falls as the sample grows: it is comparable only at equal sample sizes.
    results["fid"], results["fid_note"] = fid, note
    results["fid_samples"] = {"generated": len(images), "real": len(test_float)}
    plt.close("all")
    return run.write_metrics(results)
