"""Segmentation metrics on hand-computed masks, the mask loss, and chunked decoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from enf_lib.config import ENFConfig
from enf_lib.coordinates import coordinate_grid
from enf_lib.latents import init_latents_batch
from enf_lib.model import EquivariantNeuralField, functional
from enf_lib.segmentation import (
    confusion_counts,
    decode_chunked,
    decode_dataset,
    evaluate_masks,
    mask_loss,
    mask_loss_fn,
    predict_masks,
    segmentation_metrics,
    threshold,
)
from enf_lib.training import train_model

TARGET = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
PRED = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)   # tp 1, fp 1, fn 1, tn 5


def test_confusion_counts_by_hand():
    np.testing.assert_array_equal(confusion_counts(PRED, TARGET), [[5, 1], [1, 1]])
    np.testing.assert_array_equal(confusion_counts(PRED.astype(np.uint8), TARGET.astype(float)),
                                  [[5, 1], [1, 1]])


def test_metrics_by_hand():
    m = evaluate_masks(PRED, TARGET)
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)
    assert m["iou_flood"] == m["flood_iou"] == pytest.approx(1 / 3)
    assert m["iou_no_flood"] == pytest.approx(5 / 7)
    assert m["mean_iou"] == pytest.approx((1 / 3 + 5 / 7) / 2)             # = 11/21
    assert m["fw_iou"] == pytest.approx(0.25 / 3 + 0.75 * 5 / 7)           # = 13/21
    assert m["flood_precision"] == m["flood_recall"] == m["flood_f1"] == pytest.approx(0.5)
    assert m["flood_fraction"] == pytest.approx(0.25)


def test_metrics_pool_pixels_over_the_split_not_per_image():
    target = np.zeros((2, 2, 2), bool)
    target[0] = True                                   # image 0 all flood, image 1 none
    pred = np.zeros_like(target)
    pred[0, 0] = True                                  # half of image 0 found
    m = evaluate_masks(pred, target)
    # pooled: tp 2, fn 2, tn 4, fp 0 -> flood IoU 2/4, no-flood IoU 4/6
    assert m["flood_iou"] == pytest.approx(0.5)
    assert m["mean_iou"] == pytest.approx((0.5 + 4 / 6) / 2)


def test_no_flood_baseline_scores_a_third_at_flood_fraction_one_third():
    target = np.zeros((3, 4, 4), bool)
    target[0] = True                                   # flood fraction 1/3
    m = evaluate_masks(np.zeros_like(target), target)
    assert m["flood_iou"] == 0 and m["mean_iou"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(2 / 3) and m["fw_iou"] == pytest.approx(4 / 9)
    assert math.isnan(m["flood_precision"]) and m["flood_f1"] == 0


def test_undefined_scores_are_nan_and_the_mean_skips_them():
    m = evaluate_masks(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert math.isnan(m["flood_iou"]) and math.isnan(m["flood_f1"])
    assert m["mean_iou"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_counts(PRED, TARGET[:1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        confusion_counts(PRED * 0.7, TARGET)
    with pytest.raises(ValueError, match="non-negative"):
        segmentation_metrics(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        threshold(np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold(np.array([0.2, 1.5]))
    np.testing.assert_array_equal(threshold(np.array([0.2, 0.5, 0.9])), [False, True, True])


def test_mask_loss_by_hand():
    logits = jnp.zeros((2, 3))
    targets = jnp.array([[1.0, 0, 0], [0, 0, 1]])
    loss, m = mask_loss(logits, targets, dice_weight=0.0)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # p = 0.5 everywhere: dice = 1 - (2 * 1 + 1) / (3 + 2 + 1) = 0.5
    loss, m = mask_loss(logits, targets, dice_weight=2.0)
    assert float(m["dice"]) == pytest.approx(0.5) and float(loss) == pytest.approx(
        math.log(2) + 1.0, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(2 / 6)       # logit 0 counts as flood
    with pytest.raises(ValueError, match="differ in shape"):
        mask_loss(logits, targets[:1])


def _decoder(num_out=1, seed=0):
    cfg = ENFConfig(num_out=num_out, num_latents=4, latent_dim=8, hidden_dim=16, att_dim=8,
                    num_heads=2, num_freqs=8)
    return EquivariantNeuralField(cfg, rngs=nnx.Rngs(seed)), cfg


def test_chunked_decoding_matches_one_pass():
    model, cfg = _decoder(num_out=3)
    apply, params = functional(model)
    z = init_latents_batch(jax.random.key(0), 5, cfg.num_latents, cfg.latent_dim,
                           model.bi_invariant)
    coords = coordinate_grid(7, 9)                                        # 63: not a multiple
    full = jax.jit(apply)(params, coords, z)
    np.testing.assert_allclose(decode_chunked(apply, params, coords, z, 16), full, atol=1e-5)
    out = decode_dataset(apply, params, jax.tree.map(np.asarray, z), coords, batch_size=2,
                         chunk=10)
    np.testing.assert_allclose(out, full, atol=1e-5)
    with pytest.raises(ValueError, match="one output channel"):
        predict_masks(apply, params, z, (7, 9), batch_size=5, chunk=16)


@pytest.mark.slow
def test_mask_decoder_learns_a_mask_from_latents():
    """A half-plane mask (flood in the top rows) is decoded from grid latents."""
    model, cfg = _decoder()
    size = 8
    z = init_latents_batch(jax.random.key(1), 16, cfg.num_latents, cfg.latent_dim,
                           model.bi_invariant)
    masks = np.zeros((16, size, size), np.float32)
    masks[:, : size // 2] = 1
    data = {"pose": np.asarray(z.pose), "context": np.asarray(z.context),
            "window": np.asarray(z.window), "mask": masks.reshape(16, -1)}
    loss_fn = mask_loss_fn(coordinate_grid(size, size), 32, dice_weight=0.5)
    trained, log = train_model(model, loss_fn, data, steps=150, batch_size=8,
                               optimizer=optax.adam(3e-3), key=jax.random.key(2),
                               log_every=50)
    apply, params = functional(trained)
    prob = predict_masks(apply, params, z, (size, size), batch_size=8, chunk=16)
    assert prob.shape == (16, size, size)
    assert evaluate_masks(threshold(prob), masks)["mean_iou"] > 0.9
    with pytest.raises(ValueError, match="num_coords"):
        mask_loss_fn(coordinate_grid(size, size), 0)
