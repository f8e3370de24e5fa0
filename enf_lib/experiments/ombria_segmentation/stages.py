"""The stages of the OMBRIA segmentation experiment (see the package docstring)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from enf_lib.coordinates import coordinate_grid
from enf_lib.experiments.ombria_segmentation.config import NAME, Config
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
from enf_lib.ombria import CHANNEL_GROUPS, load_ombria
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
            data_id=data.data_id(split), reads="meta_train", seed=config.seed + 1,
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

    settings = {"decode_batch_size": config.decode_batch_size,
                "decode_chunk": config.decode_chunk, "num_show": config.num_show}
    return run.cached("reconstruct_test", settings, compute,
                      reads=("meta_train", "fit_latents_test"))


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
    with run.stage("train_mask_decoder") as record:
        folder = run.stage_dir("train_mask_decoder",
                               {"seg": seg, "masks": data.data_id("train"), "seed": config.seed},
                               reads=("fit_latents_train",))
        done_before = steps_done(folder)
        model, log = train_model(
            mask_decoder(config), loss_fn, arrays, steps=seg.steps,
            batch_size=min(seg.batch_size, len(data.train_masks)),
            optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(seg.lr)),
            key=jax.random.key(config.seed + 3), ema_decay=seg.ema_decay,
            checkpoint_dir=folder, config={"stage": folder.name},
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

    settings = {"decode_batch_size": config.decode_batch_size,
                "decode_chunk": config.decode_chunk}
    return run.cached("predict_test", settings, compute,
                      reads=("train_mask_decoder", "fit_latents_test"))["prob"]


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
