"""Flow matching with a DiT in latent space, and the CIFAR-10 diffusion experiment."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from enf_lib import diffusion
from enf_lib.diffusion import DiT, DiTConfig, DiTBlock
from enf_lib.experiments import cifar10_diffusion as exp
from enf_lib.sample_quality import fid_or_none, nearest_distances
from enf_lib.experiments import make_config
from enf_lib.experiments.runner import Run, override
from enf_lib.model import count_params
from enf_lib.training import train_model

SMALL = DiTConfig(token_dim=3, pose_dim=2, num_classes=4, width=16, depth=2, num_heads=2,
                  mlp_ratio=2, pose_freqs=2)


def _randomised(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """``model`` with every parameter replaced by noise (so zero-initialised layers act)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [0.3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy), rest)


def _inputs(b=5, l=4, cfg=SMALL, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], (b, l, cfg.token_dim))
    t = jax.random.uniform(k[1], (b,))
    labels = jnp.arange(b) % cfg.num_classes
    poses = jax.random.uniform(k[2], (b, l, cfg.pose_dim), minval=-1, maxval=1)
    return x, t, labels, poses


def test_adaln_zero_blocks_are_identity_and_velocity_zero_at_init():
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    x, t, labels, poses = _inputs()
    h = jax.random.normal(jax.random.key(1), (5, 4, SMALL.width))
    cond = jax.random.normal(jax.random.key(2), (5, SMALL.width))
    for block in model.blocks:
        assert isinstance(block, DiTBlock)
        np.testing.assert_array_equal(block(h, cond), h)
    np.testing.assert_array_equal(model(x, t, labels, poses), 0.0)
    # Once trained (here: random weights), blocks and velocity are no longer trivial.
    noisy = _randomised(model)
    assert not np.allclose(noisy.blocks[0](h, cond), h)
    assert np.abs(np.asarray(noisy(x, t, labels, poses))).mean() > 1e-3


def test_guidance_scale_one_is_conditional_and_zero_unconditional():
    model = _randomised(DiT(SMALL, rngs=nnx.Rngs(0)))
    x, t, labels, poses = _inputs()
    v_c = model(x, t, labels, poses)
    v_u = model(x, t, jnp.full_like(labels, SMALL.num_classes), poses)
    np.testing.assert_allclose(diffusion.guided_velocity(model, x, t, labels, poses, 1.0), v_c,
                               atol=1e-5)
    np.testing.assert_allclose(diffusion.guided_velocity(model, x, t, labels, poses, 0.0), v_u,
                               atol=1e-5)
    np.testing.assert_allclose(diffusion.guided_velocity(model, x, t, labels, poses, 3.0),
                               v_u + 3.0 * (v_c - v_u), atol=1e-4)


def test_sampler_compiles_once_for_any_step_count_scale_and_returns_trajectory():
    model = _randomised(DiT(SMALL, rngs=nnx.Rngs(0)))
    labels, poses = np.array([0, 1, 3]), np.zeros((4, 2), np.float32)
    key = jax.random.key(0)
    diffusion.sample(model, key, labels, poses, num_steps=2)
    before = diffusion.compile_count()
    outs = [diffusion.sample(model, key, labels, poses, num_steps=n, guidance_scale=w)
            for n, w in ((1, 1.0), (5, 2.0), (37, 0.5), (100, 4.0))]
    assert diffusion.compile_count() == before                    # traced steps and scale
    assert all(o.shape == (3, 4, SMALL.token_dim) for o in outs)
    assert np.all(np.isfinite(np.asarray(outs[-1])))
    x, traj = diffusion.sample(model, key, labels, poses, num_steps=10, snapshots=4)
    assert traj.shape == (4, 3, 4, SMALL.token_dim)
    np.testing.assert_array_equal(traj[-1], x)
    np.testing.assert_array_equal(traj[0], jax.random.normal(key, x.shape))
    # Slot k holds the last state at or before t = k / 3: after steps 3, 6 and 10 of 10.
    every = diffusion.sample(model, key, labels, poses, num_steps=10, snapshots=11)[1]
    np.testing.assert_allclose(traj, every[np.array([0, 3, 6, 10])], atol=1e-6)
    # Heun with one step equals the average of the two Euler slopes; one step of both differ.
    heun = diffusion.sample(model, key, labels, poses, num_steps=1, method="heun")
    assert not np.allclose(heun, outs[0])


def test_velocity_field_integrates_exactly_for_a_constant_field():
    """With an untrained DiT the velocity is 0: samples are the initial noise."""
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    key = jax.random.key(3)
    out = diffusion.sample(model, key, np.array([2]), np.zeros((4, 2)), num_steps=7,
                           method="heun")
    np.testing.assert_allclose(out, jax.random.normal(key, out.shape), atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    key, poses = jax.random.key(0), np.zeros((4, 2))
    with pytest.raises(ValueError, match="labels must lie in"):
        diffusion.sample(model, key, np.array([0, 4]), poses, num_steps=3)
    with pytest.raises(ValueError, match="labels must lie in"):
        diffusion.sample(model, key, np.array([-1]), poses, num_steps=3)
    with pytest.raises(ValueError, match="integer array"):
        diffusion.sample(model, key, np.array([0.5]), poses, num_steps=3)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            diffusion.sample(model, key, np.array([0]), poses, num_steps=bad)
    with pytest.raises(ValueError, match="NaN"):
        diffusion.sample(model, key, np.array([0]), np.full((4, 2), np.nan), num_steps=3)
    with pytest.raises(ValueError, match="poses must be"):
        diffusion.sample(model, key, np.array([0]), np.zeros((4, 3)), num_steps=3)
    with pytest.raises(ValueError, match="unknown method"):
        diffusion.sample(model, key, np.array([0]), poses, num_steps=3, method="rk4")
    with pytest.raises(ValueError, match="guidance_scale"):
        diffusion.sample(model, key, np.array([0]), poses, num_steps=3,
                         guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="snapshots"):
        diffusion.sample(model, key, np.array([0]), poses, num_steps=3, snapshots=1)
    with pytest.raises(ValueError, match="NaN"):
        diffusion.check_tokens(np.full((2, 4, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(N, L, D\)"):
        diffusion.check_tokens(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(width=10, num_heads=3)
    with pytest.raises(ValueError, match="depth"):
        DiTConfig(depth=0)


def test_time_sampling_and_interpolation():
    t = np.asarray(diffusion.sample_time(jax.random.key(0), (20_000,)))
    assert 0 < t.min() and t.max() < 1
    np.testing.assert_allclose(np.median(t), 0.5, atol=0.02)         # logit-normal(0, 1)
    np.testing.assert_allclose(np.mean(np.log(t / (1 - t))), 0.0, atol=0.03)
    x0, x1 = jnp.zeros((2, 3, 1)), jnp.ones((2, 3, 1))
    np.testing.assert_allclose(diffusion.interpolate(x0, x1, jnp.array([0.25, 1.0]))[:, 0, 0],
                               [0.25, 1.0])
    dropped = diffusion.drop_labels(jax.random.key(1), jnp.zeros(10_000, jnp.int32), 0.1, 7)
    np.testing.assert_allclose(np.mean(np.asarray(dropped) == 7), 0.1, atol=0.015)


@pytest.mark.slow
def test_flow_matching_learns_a_two_class_gaussian():
    """Each class is a 2-D Gaussian with its own mean and covariance; class-conditional
    samples (guidance 1) match both moments."""
    rng = np.random.default_rng(0)
    n = 4096
    means = np.array([[2.0, 0.0], [-1.0, 1.5]], np.float32)
    chol = np.array([[[0.4, 0.0], [0.2, 0.2]], [[0.25, 0.0], [-0.1, 0.3]]], np.float32)
    labels = rng.integers(0, 2, n)
    x = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.normal(size=(n, 2)))
    cfg = DiTConfig(token_dim=2, pose_dim=1, num_classes=2, width=64, depth=2, num_heads=2,
                    pose_freqs=1)
    model, _ = train_model(
        DiT(cfg, rngs=nnx.Rngs(0)), diffusion.flow_matching_loss_fn(0.1),
        {"tokens": x[:, None].astype(np.float32), "labels": labels.astype(np.int32),
         "poses": np.zeros((n, 1, 1), np.float32)},
        steps=1200, batch_size=256, optimizer=optax.adam(2e-3), key=jax.random.key(1),
        ema_decay=0.99)
    for c in (0, 1):
        s = np.asarray(diffusion.sample(model, jax.random.key(2 + c), np.full(3000, c),
                                        np.zeros((1, 1)), num_steps=50, method="heun"))[:, 0]
        np.testing.assert_allclose(s.mean(0), means[c], atol=0.08)
        np.testing.assert_allclose(np.cov(s.T), chol[c] @ chol[c].T, atol=0.04)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 2, 3)), rng.normal(size=(30, 2, 3))
    d, i = nearest_distances(q, r, batch_size=3)
    full = np.linalg.norm(q.reshape(7, 1, -1) - r.reshape(1, 30, -1), axis=-1)
    np.testing.assert_array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-4)


def test_fid_is_skipped_with_a_reason_when_unavailable():
    images = np.zeros((4, 32, 32, 3), np.float32)
    fid, note = fid_or_none(images, images)
    if fid is None:
        assert "pytorch-fid" in note or "weights" in note
    else:
        assert fid >= 0


def test_config_validates_and_profiles_resolve():
    for profile in exp.PROFILES:
        cfg = make_config("cifar10-diffusion", profile)
        assert cfg.dit.token_dim == cfg.enf.latent_dim and cfg.fit.lr_pose == 0
    assert override(exp.PROFILES["quick"], ["enf.latent_dim=8"]).dit.token_dim == 8
    with pytest.raises(ValueError, match="lr_pose"):
        override(exp.PROFILES["quick"], ["fit.lr_pose=2.0"])
    with pytest.raises(ValueError, match="method"):
        override(exp.PROFILES["quick"], ["sampling.method=rk4"])
    full = exp.PROFILES["full"]
    assert 100e6 < count_params(DiT(full.dit, rngs=nnx.Rngs(0))) < 160e6


TINY = ["data.num_train=40", "data.num_test=20", "meta_steps=3", "fit_batch=20",
        "enf.num_latents=4", "enf.latent_dim=4", "enf.hidden_dim=16", "enf.att_dim=8",
        "enf.num_freqs=8", "diffusion.dit.width=16",
        "diffusion.dit.depth=1", "diffusion.dit.num_heads=2", "diffusion.steps=4",
        "diffusion.batch_size=16", "sampling.per_class=2", "sampling.num_steps=3",
        "sampling.sweep_per_class=1", "sampling.snapshots=3",
        "evaluation.classifier.dim=16", "evaluation.classifier.depth=1",
        "evaluation.classifier.steps=3", "evaluation.classifier.warmup=1",
        "evaluation.classifier.batch_size=16",
        "evaluation.nn_samples=10"]


@pytest.mark.slow
@pytest.mark.data
def test_experiment_runs_end_to_end_and_reuses_its_stages(tmp_path):
    if not os.environ.get("ENF_DATA_DIR"):
        pytest.skip("needs ENF_DATA_DIR with a local CIFAR-10 copy")
    cfg = make_config("cifar10-diffusion", "quick", TINY)
    metrics = exp.run(cfg, Run(tmp_path, "cifar10-diffusion", "custom", cfg, verbose=False))
    assert np.isfinite(metrics["recon_psnr_test"])
    assert set(metrics["classifier"]["per_class_generated"]) == set(exp.CIFAR10_CLASSES)
    assert 0 <= metrics["classifier"]["accuracy_generated"] <= 1
    assert set(metrics["guidance_sweep"]) == {f"{w:g}" for w in cfg.sampling.guidance_sweep}
    assert metrics["sampling"]["seconds_per_image"] > 0
    assert metrics["nearest_neighbours"]["num"] == 10
    assert metrics["pose_study"]["moving_pose_shift_grid_spacings"] >= 0
    assert metrics["pose_study"]["moving_minus_fixed_se"] >= 0
    assert metrics["fid"] is None or metrics["fid"] >= 0
    assert isinstance(metrics["fid_note"], str) and metrics["fid_note"]
    assert metrics["fid_samples"] == {"generated": 10 * cfg.sampling.per_class,
                                      "real": cfg.data.num_test}
    for name in ("samples", "trajectory", "guidance", "neighbours"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    again = exp.run(cfg, Run(tmp_path, "cifar10-diffusion", "custom", cfg, verbose=False))
    for stage in ("meta_train", "fit_train", "fit_test", "train_dit", "classifier"):
        assert again["stages"][stage]["reused"], stage
    assert again["recon_psnr_test"] == metrics["recon_psnr_test"]
    assert dataclasses.asdict(cfg)["fit"]["lr_pose"] == 0
