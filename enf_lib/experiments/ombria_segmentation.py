"""Flood segmentation on OMBRIA from the latents of an Equivariant Neural Field.

Two ENFs share one latent point cloud per tile:

1. ``meta_train``: a reconstruction ENF (8 outputs: S1 and S2, before and after the flood) is
   meta-learned on the training tiles.
2. ``fit_latents_train`` / ``fit_latents_test``: latents are fitted to every tile with that
   decoder frozen; ``reconstruct_test`` measures the test PSNR per channel group.
3. ``train_mask_decoder``: a second ENF with one output (the flood logit) is trained directly
   (no inner loop) to decode the flood mask from the *frozen* latents (contexts normalised with
   training statistics), with a logistic loss plus a soft Dice loss on random pixel subsets.
4. ``predict_test``: masks of the test tiles, decoded in chunks, scored over the whole split
   beside the trivial "no flood" prediction.

``python -m enf_lib.experiments ombria-segmentation --profile quick --out runs/seg`` runs them
all; the notebook ``08_ombria_segmentation`` calls the same functions one by one.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pydantic.dataclasses
from flax import nnx
from matplotlib.figure import Figure
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from enf_lib.config import STRICT, ENFConfig, FitConfig
from enf_lib.coordinates import coordinate_grid
from enf_lib.experiments.runner import Run, digest
from enf_lib.experiments.stages import (
    fit_latents_stage,
    meta_train_stage,
    record_loop,
    steps_done,
)
from enf_lib.fitting import MetaLearner, MetaState, psnr
from enf_lib.latents import ContextStats, Latents
from enf_lib.model import EquivariantNeuralField, functional
from enf_lib.ombria import CHANNEL_GROUPS, TILE_SIZE, load_ombria
from enf_lib.plotting import plot_latents
from enf_lib.segmentation import (
    decode_chunked,
    decode_dataset,
    evaluate_masks,
    mask_loss_fn,
    predict_masks,
    threshold,
)
from enf_lib.tracking import MetricLogger
from enf_lib.training import train_model

NAME = "ombria-segmentation"


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SegConfig:
    """The mask decoder: an ENF with one output, and how it is trained.

    Its latent shape (number, dimension, bi-invariant) is that of the reconstruction ENF;
    the fields here set the rest of its architecture and its supervised training.

    Attributes:
      hidden_dim, att_dim, num_heads, k_nearest, freq_query, freq_value, num_freqs,
        head_depth: as in :class:`~enf_lib.config.ENFConfig`.
      steps, batch_size, lr: Adam steps, tiles per step, learning rate.
      coords_per_step: random pixels scored per step (``None`` = all).
      dice_weight: weight of the soft Dice loss added to the cross-entropy (0 = off).
      ema_decay: keep an exponential moving average of the weights (``None`` = off).
    """

    hidden_dim: PositiveInt = 128
    att_dim: PositiveInt = 128
    num_heads: PositiveInt = 3
    k_nearest: PositiveInt | None = 4
    freq_query: PositiveFloat = 3.0
    freq_value: PositiveFloat = 5.0
    num_freqs: PositiveInt = 64
    head_depth: NonNegativeInt = 1
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 5e-4
    coords_per_step: PositiveInt | None = 1024
    dice_weight: NonNegativeFloat = 0.5
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None

    def enf(self, recon: ENFConfig) -> ENFConfig:
        """The mask decoder's :class:`ENFConfig`: latent shape from ``recon``, one output."""
        return dataclasses.replace(
            recon, num_out=1, hidden_dim=self.hidden_dim, att_dim=self.att_dim,
            num_heads=self.num_heads, k_nearest=self.k_nearest, freq_query=self.freq_query,
            freq_value=self.freq_value, num_freqs=self.num_freqs, head_depth=self.head_depth)


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Config:
    """The OMBRIA segmentation experiment.

    Attributes:
      size: tile side after downscaling (a divisor of 256; 256 = full resolution).
      num_train: training tiles (the first by id; ``None`` = every one available).
      enf, fit: the reconstruction ENF (8 outputs) and its meta-learning.
      meta_steps: outer steps of meta-learning.
      seg: the mask decoder and its training.
      fit_batch_size: tiles per chunk when fitting latents.
      decode_batch_size, decode_chunk: tiles and pixels per step when decoding test tiles.
      threshold: flood probability at which a pixel counts as flooded.
      num_show: test tiles shown in the figures.
      seed: seeds everything.
    """

    size: PositiveInt = 64
    num_train: PositiveInt | None = None
    enf: ENFConfig = ENFConfig(num_out=8)
    fit: FitConfig = FitConfig()
    meta_steps: PositiveInt = 1000
    seg: SegConfig = SegConfig()
    fit_batch_size: PositiveInt = 64
    decode_batch_size: PositiveInt = 16
    decode_chunk: PositiveInt = 4096
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    num_show: PositiveInt = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if TILE_SIZE % self.size:
            raise ValueError(f"size={self.size} is not a divisor of {TILE_SIZE}")
        if self.enf.num_out != 8:
            raise ValueError(f"enf.num_out={self.enf.num_out} is not 8 (the OMBRIA channels)")
        if self.num_train is not None and self.num_train < self.fit.batch_size:
            raise ValueError(f"num_train={self.num_train} is below "
                             f"fit.batch_size={self.fit.batch_size}")
        if self.seg.k_nearest is not None and self.seg.k_nearest > self.enf.num_latents:
            raise ValueError(f"seg.k_nearest={self.seg.k_nearest} exceeds "
                             f"enf.num_latents={self.enf.num_latents}")


_QUICK_ENF = ENFConfig(num_out=8, num_latents=64, latent_dim=32, hidden_dim=64, att_dim=32,
                       num_heads=2, num_freqs=32, freq_query=3.0, freq_value=5.0)
_REF_ENF = ENFConfig(num_out=8, num_latents=256, latent_dim=256, hidden_dim=256, att_dim=256,
                     num_heads=3, freq_query=15.0, freq_value=30.0)
_REF_FIT = FitConfig(inner_steps=3, lr_pose=0.0, lr_context=60.0, lr_window=0.0,
                     second_order=False, batch_size=8, outer_lr=5e-4)

PROFILES: dict[str, Config] = {
    # 2 CPU cores, a few minutes: 32x32 tiles, a small decoder, first-order meta-learning.
    "quick": Config(
        size=32, num_train=200, enf=_QUICK_ENF,
        fit=dataclasses.replace(_REF_FIT, lr_context=30.0, outer_lr=1e-3,
                                inner_coords=256, outer_coords=512),
        meta_steps=250,
        seg=SegConfig(hidden_dim=64, att_dim=32, num_heads=2, num_freqs=32, steps=400,
                      batch_size=8, lr=1e-3, coords_per_step=256),
        fit_batch_size=64, decode_batch_size=70, decode_chunk=1024),
    # One GPU, minutes: 128x128 tiles, the reference architecture, pixel subsampling
    # (XLA's estimate: 0.31 TFLOP per meta-learning step, 0.06 per mask decoder step).
    "standard": Config(
        size=128, enf=_REF_ENF,
        fit=dataclasses.replace(_REF_FIT, inner_coords=4096, outer_coords=4096),
        meta_steps=3000,
        seg=SegConfig(steps=3000, coords_per_step=4096),
        fit_batch_size=8, decode_batch_size=8, decode_chunk=4096),
    # Paper scale: full 256x256 tiles, 256 latents x 256, subsampled pixels to fit 80 GB;
    # 8,000 steps of batch 8 are about the reference's 100 epochs of 624 tiles per model.
    "full": Config(
        size=256, enf=_REF_ENF,
        fit=dataclasses.replace(_REF_FIT, inner_coords=8192, outer_coords=8192),
        meta_steps=8_000,
        seg=SegConfig(steps=8_000, coords_per_step=8192),
        fit_batch_size=8, decode_batch_size=8, decode_chunk=8192),
}


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """The tiles of both splits: inputs uint8 ``(N, S, S, 8)``, masks bool ``(N, S, S)``."""

    train_inputs: np.ndarray
    train_masks: np.ndarray
    train_ids: np.ndarray
    test_inputs: np.ndarray
    test_masks: np.ndarray
    test_ids: np.ndarray

    def arrays(self) -> list[np.ndarray]:
        """Every array of both splits (for :meth:`Run.use_data`)."""
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def data_id(self, split: str) -> tuple[Any, ...]:
        """What identifies one split's tiles in the stage caches."""
        ids = getattr(self, f"{split}_ids")
        inputs = getattr(self, f"{split}_inputs")
        return ("ombria", split, inputs.shape[1], len(ids), digest(ids.tolist()))


def load_data(config: Config) -> Data:
    """The training tiles (``config.num_train`` first by id) and every test tile."""
    train = load_ombria("train", size=config.size, limit=config.num_train)
    test = load_ombria("test", size=config.size)
    return Data(*train, *test)


def recon_deps(config: Config, data: Data) -> tuple[Any, ...]:
    """What the reconstruction decoder depends on (keys every later stage's cache)."""
    return (config.enf, config.fit, data.data_id("train"), config.seed, config.meta_steps)


def train_reconstruction(run: Run, config: Config, data: Data
                         ) -> tuple[MetaLearner, MetaState, MetricLogger]:
    """Stage 1: meta-learn the 8-channel reconstruction ENF on the training tiles."""
    learner = MetaLearner(config.enf, config.fit, (config.size, config.size))
    state, log = meta_train_stage(run, learner, data.train_inputs, steps=config.meta_steps,
                                  seed=config.seed, data_id=data.data_id("train"))
    return learner, state, log


def fit_latents(run: Run, config: Config, data: Data, learner: MetaLearner, state: MetaState
                ) -> dict[str, tuple[Latents, np.ndarray]]:
    """Stage 2: latents and per-tile PSNR of both splits, the decoder frozen."""
    out = {}
    for split in ("train", "test"):
        out[split] = fit_latents_stage(
            run, f"fit_latents_{split}", learner, state, getattr(data, f"{split}_inputs"),
            deps=(*recon_deps(config, data), data.data_id(split)), seed=config.seed + 1,
            batch_size=config.fit_batch_size)
    return out


def group_psnr(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-tile PSNR ``(N,)`` of each channel group of :data:`CHANNEL_GROUPS`.

    ``pred`` float ``(N, H, W, 8)`` (clipped to ``[0, 1]``), ``target`` uint8 or float in
    ``[0, 1]``.
    """
    target = target / 255.0 if target.dtype == np.uint8 else target
    out = {}
    for name, sl in CHANNEL_GROUPS.items():
        out[name] = np.asarray(psnr(jnp.asarray(pred[..., sl]), jnp.asarray(target[..., sl])))
    return out


def reconstruct_test(run: Run, config: Config, data: Data, learner: MetaLearner,
                     state: MetaState, z_test: Latents) -> dict[str, np.ndarray]:
    """Decode the test latents: per-tile PSNR per channel group (``psnr_<group>``) and the
    reconstructions of the first ``num_show`` tiles (``shown``)."""
    def compute() -> dict[str, np.ndarray]:
        recon = decode_dataset(learner.apply, state.params, z_test,
                               coordinate_grid(config.size, config.size),
                               batch_size=config.decode_batch_size, chunk=config.decode_chunk,
                               desc=f"reconstructing test ({NAME})")
        recon = recon.reshape(-1, config.size, config.size, 8)
        scores = group_psnr(recon, data.test_inputs)
        return {**{f"psnr_{k}": v for k, v in scores.items()},
                "shown": np.clip(recon[:config.num_show], 0, 1)}

    deps = (*recon_deps(config, data), data.data_id("test"), config.seed + 1)
    return run.cached("reconstruct_test", deps, compute)


def mask_decoder(config: Config) -> EquivariantNeuralField:
    """A freshly initialised mask decoder."""
    return EquivariantNeuralField(config.seg.enf(config.enf), rngs=nnx.Rngs(config.seed + 2))


def train_mask_decoder(run: Run, config: Config, data: Data, z_train: Latents
                       ) -> tuple[EquivariantNeuralField, ContextStats, MetricLogger]:
    """Stage 3: train the mask decoder on the frozen training latents (checkpointed).

    Returns the trained decoder, the context statistics it expects its inputs normalised with,
    and its training history.
    """
    stats = ContextStats.from_latents(z_train)
    z = stats.normalize(z_train)
    seg = config.seg
    arrays = {"pose": np.asarray(z.pose), "context": np.asarray(z.context),
              "window": np.asarray(z.window),
              "mask": data.train_masks.reshape(len(data.train_masks), -1).astype(np.float32)}
    loss_fn = mask_loss_fn(coordinate_grid(config.size, config.size), seg.coords_per_step,
                           seg.dice_weight)
    deps = (*recon_deps(config, data), config.seed + 1, seg, config.seed + 2)
    with run.stage("train_mask_decoder") as record:
        folder = run.stage_dir("train_mask_decoder", *deps)
        done_before = steps_done(folder)
        model, log = train_model(
            mask_decoder(config), loss_fn, arrays, steps=seg.steps,
            batch_size=min(seg.batch_size, len(data.train_masks)),
            optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(seg.lr)),
            key=jax.random.key(config.seed + 3), ema_decay=seg.ema_decay,
            checkpoint_dir=folder, config={"deps": digest(*deps)},
            desc=f"train_mask_decoder ({NAME})")
        record_loop(record, log, done_before, seg.steps)
    return model, stats, log


def predict_test(run: Run, config: Config, data: Data, model: EquivariantNeuralField,
                 stats: ContextStats, z_test: Latents) -> np.ndarray:
    """Stage 4: flood probabilities ``(N, S, S)`` of the test tiles (decoded in chunks)."""
    def compute() -> dict[str, np.ndarray]:
        apply, params = functional(model)
        prob = predict_masks(apply, params, stats.normalize(z_test), (config.size, config.size),
                             batch_size=config.decode_batch_size, chunk=config.decode_chunk,
                             desc=f"predicting test masks ({NAME})")
        return {"prob": prob}

    deps = (*recon_deps(config, data), config.seed + 1, config.seg, config.seed + 2,
            data.data_id("test"))
    return run.cached("predict_test", deps, compute)["prob"]


def results(config: Config, data: Data, latents: dict[str, tuple[Latents, np.ndarray]],
            recon: dict[str, np.ndarray], prob: np.ndarray) -> dict[str, Any]:
    """The scores: test segmentation metrics, the "no flood" baseline, test PSNR per group."""
    pred = threshold(prob, config.threshold)
    seg = evaluate_masks(pred, data.test_masks)
    base = evaluate_masks(np.zeros_like(data.test_masks), data.test_masks)
    out: dict[str, Any] = {f"test_{k}": v for k, v in seg.items()}
    out.update({f"baseline_no_flood_{k}": base[k] for k in
                ("mean_iou", "pixel_accuracy", "fw_iou", "flood_iou")})
    out["test_psnr"] = float(np.mean(latents["test"][1]))
    out["train_psnr"] = float(np.mean(latents["train"][1]))
    out.update({f"test_psnr_{k[5:]}": float(np.mean(v)) for k, v in recon.items()
                if k.startswith("psnr_")})
    out["num_train"], out["num_test"], out["size"] = (len(data.train_ids), len(data.test_ids),
                                                      config.size)
    return out


def _compiled_cost(compiled: Any) -> dict[str, float]:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"gb": (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                   + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 1e9,
            "temp_gb": mem.temp_size_in_bytes / 1e9,
            "tflop": float(cost.get("flops", float("nan"))) / 1e12}


def memory_estimate(config: Config, num_train: int = 624) -> dict[str, dict[str, float]]:
    """Memory and compute of the three big steps of ``config``, from XLA's analysis of the
    compiled steps (nothing is run; on a CPU this compiles for the CPU, whose buffer
    assignment is close to, but not the same as, a GPU's).

    Returns, for ``meta_step`` (one outer step of meta-learning with the training tiles
    resident as float32), ``mask_step`` (forward and backward of the mask decoder's loss) and
    ``decode`` (one chunked decoding batch of the reconstruction ENF): ``gb`` (arguments,
    outputs and temporaries), ``temp_gb`` and ``tflop``.
    """
    side, e = config.size, config.enf
    learner = MetaLearner(e, config.fit, (side, side))
    state = jax.eval_shape(learner.init, jax.random.key(0))
    data = jax.ShapeDtypeStruct((num_train, side, side, 8), np.float32)
    meta = learner.train_step.lower(state, data, jax.random.key(1)).compile()

    b, pose_dim = config.seg.batch_size, learner.bi_invariant.pose_dim
    batch = {"pose": jax.ShapeDtypeStruct((b, e.num_latents, pose_dim), np.float32),
             "context": jax.ShapeDtypeStruct((b, e.num_latents, e.latent_dim), np.float32),
             "window": jax.ShapeDtypeStruct((b, e.num_latents, 1), np.float32),
             "mask": jax.ShapeDtypeStruct((b, side * side), np.float32)}
    graphdef, params = nnx.split(mask_decoder(config))
    loss_fn = mask_loss_fn(coordinate_grid(side, side), config.seg.coords_per_step,
                           config.seg.dice_weight)

    def mask_grad(p: Any, batch: dict[str, Any], key: Any) -> Any:
        return jax.grad(lambda q: loss_fn(nnx.merge(graphdef, q), batch, key)[0])(p)

    mask = jax.jit(mask_grad).lower(params, batch, jax.random.key(2)).compile()

    z = Latents(*(jax.ShapeDtypeStruct((config.decode_batch_size, *batch[k].shape[1:]),
                                       np.float32) for k in ("pose", "context", "window")))
    decode = decode_chunked.lower(learner.apply, state.params, coordinate_grid(side, side),
                                  z, min(config.decode_chunk, side * side)).compile()
    return {"meta_step": _compiled_cost(meta), "mask_step": _compiled_cost(mask),
            "decode": _compiled_cost(decode)}


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------

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
                ax.set_title(titles[c], fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    if caption:
        fig.text(0.01, 0.0, caption, fontsize=7, ha="left", va="top", wrap=True)
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
        ax.set_title(f"tile {data.test_ids[i]}", fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------
# The whole experiment
# ------------------------------------------------------------------------------------------


def run(config: Config, run: Run) -> dict[str, Any]:
    """Every stage, the figures and ``metrics.json``; returns the metrics."""
    data = load_data(config)
    run.use_data(*data.arrays())
    learner, state, _ = train_reconstruction(run, config, data)
    latents = fit_latents(run, config, data, learner, state)
    z_test = latents["test"][0]
    recon = reconstruct_test(run, config, data, learner, state, z_test)
    model, stats, _ = train_mask_decoder(run, config, data, latents["train"][0])
    prob = predict_test(run, config, data, model, stats, z_test)
    figures = {"inputs": figure_inputs(config, data),
               "reconstructions": figure_reconstructions(config, data, recon),
               "masks": figure_masks(config, data, prob),
               "latents": figure_latents(config, data, z_test)}
    for name, fig in figures.items():
        run.save_figure(fig, name)
        plt.close(fig)
    return run.write_metrics(results(config, data, latents, recon, prob))


__all__ = ["Config", "Data", "PROFILES", "SegConfig", "fit_latents", "load_data",
           "memory_estimate",
           "predict_test", "reconstruct_test", "results", "run", "train_mask_decoder",
           "train_reconstruction"]
