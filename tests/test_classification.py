"""Latent classifiers, classification metrics and the CIFAR-10 classification experiment."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enf_lib.classifiers import (ClassifierConfig, make_classifier, pairwise_invariants, predict,
                                 train_classifier)
from enf_lib.config import ENFConfig, FitConfig
from enf_lib.experiments import Run, cifar10_classification as cls_exp
from enf_lib.geometry import get_bi_invariant
from enf_lib.latents import Latents
from enf_lib.metrics import accuracy, confusion_matrix, per_class_accuracy
from enf_lib.synthetic import shapes_dataset

SMALL = ClassifierConfig(dim=32, depth=2, num_heads=2, steps=20, batch_size=8)


def test_metrics_on_hand_computed_cases():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    logits = np.eye(3)[preds] * 5.0                       # argmax of logits = preds
    assert accuracy(logits, labels) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 3),
                                  [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(per_class_accuracy(preds, labels, 3), [0.5, 1.0, 0.5])
    assert np.isnan(per_class_accuracy(preds, labels, 4)[3])   # a class without examples
    with pytest.raises(ValueError, match="labels"):
        accuracy(preds, labels[:3])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        confusion_matrix(preds, labels, 2)
    with pytest.raises(ValueError, match="no examples"):
        accuracy(np.zeros(0, int), np.zeros(0, int))


def _latents(bi, key, batch=4, num=9, dim=8):
    k1, k2 = jax.random.split(key)
    return Latents(bi.random_poses(k1, (batch, num)), jax.random.normal(k2, (batch, num, dim)),
                   jnp.full((batch, num, 1), 0.5))


@pytest.mark.parametrize("name", ["translation", "distance", "se2"])
def test_invariant_classifier_is_invariant_and_transformer_is_not(name):
    bi = get_bi_invariant(name)
    z = _latents(bi, jax.random.key(0))
    make = lambda kind: make_classifier(kind, latent_dim=8, bi_invariant=name, num_classes=10,
                                        cfg=SMALL, rngs=nnx.Rngs(1))
    inv, tr = make("invariant"), make("transformer")
    for i in range(3):
        g = bi.random_element(jax.random.key(10 + i))
        moved = z.transform(bi, g)
        np.testing.assert_allclose(inv(moved), inv(z), atol=2e-5)
        assert float(jnp.abs(tr(moved) - tr(z)).max()) > 1e-2
    # Pairwise invariants themselves are invariant, and permuting latents permutes them.
    a = pairwise_invariants(bi, z.pose)
    np.testing.assert_allclose(pairwise_invariants(bi, moved.pose), a, atol=2e-5)
    perm = jnp.array([3, 1, 0, 2, 8, 7, 6, 5, 4])
    np.testing.assert_allclose(pairwise_invariants(bi, z.pose[:, perm]), a[:, perm][:, :, perm],
                               atol=1e-6)
    # Both classifiers ignore the order of the latents (a set, not a sequence).
    zp = jax.tree.map(lambda x: x[:, perm], z)
    np.testing.assert_allclose(inv(zp), inv(z), atol=2e-5)
    np.testing.assert_allclose(tr(zp), tr(z), atol=2e-5)


def test_invariant_classifier_refuses_the_absolute_baseline():
    with pytest.raises(ValueError, match="not invariant"):
        make_classifier("invariant", latent_dim=8, bi_invariant="absolute", num_classes=10,
                        cfg=SMALL, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown classifier kind"):
        make_classifier("cnn", latent_dim=8, bi_invariant="translation", num_classes=10,
                        cfg=SMALL, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible"):
        ClassifierConfig(dim=30, num_heads=4)


def test_classifier_learns_a_pose_rule_and_predict_pads_chunks():
    """Class = whether the latents are spread wide or packed tight: only poses tell."""
    bi = get_bi_invariant("translation")
    z = _latents(bi, jax.random.key(0), batch=256, dim=4)
    labels = np.arange(256) % 2
    z = z.replace(pose=z.pose * jnp.where(labels == 1, 1.0, 0.3)[:, None, None],
                  context=jnp.zeros_like(z.context))
    z = jax.tree.map(np.asarray, z)
    cfg = dataclasses.replace(SMALL, steps=150, batch_size=32, lr=3e-3)
    model = make_classifier("invariant", latent_dim=4, bi_invariant="translation",
                            num_classes=2, cfg=cfg, rngs=nnx.Rngs(0))
    model, log = train_classifier(model, z, labels, cfg, jax.random.key(1), num_classes=2)
    logits = predict(model, z, batch_size=100)                    # 3 chunks, the last padded
    assert logits.shape == (256, 2) and accuracy(logits, labels) > 0.9
    np.testing.assert_allclose(logits[:100], predict(model, jax.tree.map(lambda a: a[:100], z)),
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train_classifier(model, z, labels + 1, cfg, jax.random.key(1), num_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        predict(model, z.replace(context=np.full_like(z.context, np.nan)))


def test_shift_images_moves_content_and_repeats_the_edge():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    out = cls_exp.shift_images(img, 1)[0, :, :, 0]
    np.testing.assert_array_equal(out[1:, 1:], img[0, :3, :3, 0])
    np.testing.assert_array_equal(out[0, 1:], img[0, 0, :3, 0])    # top row repeats the edge
    assert cls_exp.shift_images(img, 0) is img


def fake_cifar10(seed_offset=0):
    """A stand-in for ``load_cifar10``: synthetic shapes labelled by index."""
    def load(split, limit=None):
        n = limit or 64
        seed = (0 if split == "train" else 1) + seed_offset
        images = (shapes_dataset(n, size=32, seed=seed) * 255).astype(np.uint8)
        return images, np.arange(n) % 10
    return load


TINY = cls_exp.Config(
    enf=ENFConfig(num_latents=4, latent_dim=8, hidden_dim=16, att_dim=8, num_heads=1,
                  num_freqs=8),
    fit=FitConfig(batch_size=4, second_order=False, inner_coords=64, outer_coords=64),
    classifier=dataclasses.replace(SMALL, steps=5), train_images=40, test_images=20,
    meta_steps=3, fit_batch_size=16, shifts=(1,))


@pytest.mark.slow
def test_experiment_runs_every_stage_and_reruns_exactly_what_a_change_affects(
        tmp_path, monkeypatch):
    """Every stage at tiny scale on synthetic shapes; then each input of the pipeline changed
    in turn: the stages downstream of it are computed again, the others reused (keys chain from
    the stages a stage reads)."""
    import enf_lib.experiments.runner as runner

    monkeypatch.setattr(cls_exp.stages, "load_cifar10", fake_cifar10())

    def run(cfg):
        return cls_exp.run(cfg, Run(tmp_path, "cifar10-classification", "custom", cfg,
                                    verbose=False))

    def rerun(cfg):
        return {n for n, r in run(cfg)["stages"].items()
                if not r["reused"] and n not in ("load_data", "evaluate")}

    metrics = run(TINY)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_test"] == 20 and set(saved["test_accuracy"]) == {"transformer", "invariant"}
    assert all(0 <= a <= 1 for a in saved["test_accuracy"].values())
    assert np.asarray(saved["confusion"]["invariant"]).sum() == 20
    assert saved["shift_pixels"] == [0, 1] and len(saved["shift_accuracy"]["invariant"]) == 2
    latent_inv = saved["shift_accuracy_latent"]["invariant"]
    assert latent_inv[0] == latent_inv[1] == saved["test_accuracy"]["invariant"]
    assert saved["provenance"]["config"]["meta_steps"] == 3
    for name in ("confusion", "shift_accuracy", "latents", "enf_training"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    everything = {"meta_train", "latents_train", "latents_test", "latents_test_shift1",
                  "classifier_transformer", "classifier_invariant"}
    assert {n for n, r in metrics["stages"].items() if not r["reused"]} >= everything

    again = run(TINY)                                   # nothing changed: everything reused
    assert all(r["reused"] for n, r in again["stages"].items()
               if n not in ("load_data", "evaluate")), again["stages"]
    assert again["test_accuracy"] == metrics["test_accuracy"]
    # Downstream only: the classifiers, then the fitted latents (and so the classifiers).
    classifiers = {"classifier_transformer", "classifier_invariant"}
    latents = {"latents_train", "latents_test", "latents_test_shift1"}
    assert rerun(dataclasses.replace(TINY, classifier=SMALL)) == classifiers
    assert rerun(dataclasses.replace(TINY, fit_batch_size=8)) == latents | classifiers
    # Upstream: the decoder's training, the code, the data.
    assert rerun(dataclasses.replace(TINY, meta_steps=4)) == everything
    monkeypatch.setattr(runner, "code_version", lambda: "another commit")
    assert rerun(TINY) == everything
    monkeypatch.setattr(cls_exp.stages, "load_cifar10", fake_cifar10(seed_offset=5))
    assert rerun(TINY) == everything
