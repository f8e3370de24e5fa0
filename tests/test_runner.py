"""The experiment runner: overrides, cached stages, metrics with provenance, the training loop."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from enf_lib.config import ENFConfig, FitConfig
from enf_lib.experiments import EXPERIMENTS, make_config
from enf_lib.experiments.__main__ import main
from enf_lib.experiments.runner import Run, digest, load_metrics, override
from enf_lib.latents import ContextStats, Latents, latents_from_arrays, latents_to_arrays
from enf_lib.training import epoch_batch, train_model


@dataclasses.dataclass(frozen=True)
class Toy:
    enf: ENFConfig = ENFConfig()
    fit: FitConfig = FitConfig()
    steps: int = 10
    lr: float = 1e-3
    name: str = "a"
    sizes: tuple[int, int] = (1, 2)
    limit: int | None = None


def test_override_parses_types_and_validates():
    cfg = override(Toy(), ["enf.num_latents=25", "fit.second_order=False", "steps=3", "lr=1",
                           "name=b", "sizes=(3, 4)", "enf.k_nearest=None", "limit=7",
                           "enf.bi_invariant=se2"])
    assert cfg.enf.num_latents == 25 and cfg.fit.second_order is False and cfg.steps == 3
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.name == "b"
    assert cfg.sizes == (3, 4) and cfg.enf.k_nearest is None and cfg.limit == 7
    assert cfg.enf.bi_invariant == "se2"
    with pytest.raises(ValueError, match="has no field 'nope'; fields: enf, fit"):
        override(Toy(), ["nope=1"])
    with pytest.raises(ValueError, match="not of the form"):
        override(Toy(), ["steps"])
    with pytest.raises(ValueError, match="expected a int"):
        override(Toy(), ["steps=many"])
    with pytest.raises(ValueError, match="is a section"):
        override(Toy(), ["enf=3"])
    with pytest.raises(ValueError, match="num_latents"):
        override(Toy(), ["enf.num_latents=0"])          # the dataclass validates itself


def test_cached_stage_computes_once_and_metrics_have_provenance(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3)}

    run = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
    run.use_data(np.arange(4))
    first = run.cached("stage", ("a", 1), compute)
    run2 = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
    run2.use_data(np.arange(4))
    again = run2.cached("stage", ("a", 1), compute)
    run2.cached("stage", ("a", 2), compute)             # other deps: computed again
    assert len(calls) == 2 and np.array_equal(first["x"], again["x"])
    assert run2.stages["stage"]["reused"] is False        # the last call computed
    metrics = run2.write_metrics({"score": np.float32(0.5)})
    saved = load_metrics(tmp_path)
    assert saved == json.loads(json.dumps(metrics))
    assert saved["score"] == 0.5 and saved["provenance"]["config"]["enf"]["num_latents"] == 16
    assert {"code_version", "versions", "device", "date"} <= set(saved["provenance"])
    assert digest(Toy()) == digest(Toy()) != digest(Toy(steps=11))


def test_cli_lists_tasks_and_rejects_bad_overrides(capsys):
    assert set(EXPERIMENTS) == {"cifar10-classification", "ombria-segmentation",
                                "cifar10-diffusion"}
    with pytest.raises(SystemExit):
        main(["no-such-task", "--out", "x"])
    with pytest.raises(ValueError, match="unknown experiment"):
        make_config("no-such-task", "quick")


def test_latent_arrays_round_trip_and_context_stats():
    z = Latents(pose=np.random.rand(5, 4, 2), context=np.random.rand(5, 4, 3) * 4 + 2,
                window=np.ones((5, 4, 1)))
    back = latents_from_arrays(latents_to_arrays(z, "train_"), "train_")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(z), jax.tree.leaves(back)))
    stats = ContextStats.from_latents(z)
    normed = stats.normalize(z).context.reshape(-1, 3)
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normed.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(stats.denormalize(stats.normalize(z)).context, z.context, rtol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        ContextStats.from_latents(z.replace(context=np.full((5, 4, 3), np.nan)))


def test_stages_rerun_when_the_data_or_the_code_version_changes(tmp_path, monkeypatch):
    import enf_lib.experiments.runner as runner

    calls = []

    def stage(data, version="v1", deps=("a",)):
        monkeypatch.setattr(runner, "code_version", lambda: version)
        run = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
        run.use_data(data)
        run.cached("stage", deps, lambda: calls.append(1) or {"x": np.arange(2)})
        return run.stages["stage"]["reused"]

    data = np.arange(6, dtype=np.uint8)
    assert not stage(data)
    assert stage(data.copy())                          # the same bytes: reused
    assert not stage(data[::-1].copy())                # other data of the same shape
    assert not stage(data.astype(np.int32))            # the same values, another dtype
    assert not stage(data, version="v2")               # another code version
    assert not stage(data, deps=("b",))                # another config
    assert stage(data) and len(calls) == 5
    with pytest.raises(RuntimeError, match="use_data"):
        Run(tmp_path, "toy", "quick", Toy(), verbose=False).stage_dir("stage")


def test_stage_keys_chain_from_the_stages_they_read(tmp_path):
    computed = []

    def pipeline(a=1, b=1, c=1):
        run = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
        run.use_data(np.arange(3))
        for name, config, reads in (("a", a, ()), ("b", b, ("a",)), ("c", c, ("b",)),
                                    ("d", 1, ("a",))):
            run.cached(name, config, lambda: {"x": np.zeros(1)}, reads=reads)
        computed.append({n for n, r in run.stages.items() if not r["reused"]})

    for kwargs, rerun in (({}, {"a", "b", "c", "d"}), ({}, set()), ({"c": 2}, {"c"}),
                          ({"b": 2}, {"b", "c"}), ({"a": 2}, {"a", "b", "c", "d"})):
        pipeline(**kwargs)
        assert computed[-1] == rerun, kwargs
    run = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
    run.use_data(np.arange(3))
    with pytest.raises(RuntimeError, match="reads \\['a'\\], which did not run"):
        run.stage_dir("b", 1, reads=("a",))


def test_latents_stage_is_keyed_by_the_fit_batch_size(tmp_path):
    from enf_lib.experiments.stages import fit_latents_stage
    from enf_lib.synthetic import shapes_dataset
    from test_fitting import learner

    lrn = learner()
    state = lrn.init(jax.random.key(0))
    images = shapes_dataset(6, size=16, seed=0)
    run = Run(tmp_path, "toy", "quick", Toy(), verbose=False)
    run.use_data(images)
    run.stage_dir("meta_train", "a decoder")
    fit = dict(data_id="images", reads="meta_train", seed=0)
    z4, _ = fit_latents_stage(run, "latents", lrn, state, images, **fit, batch_size=4)
    z6, _ = fit_latents_stage(run, "latents", lrn, state, images, **fit, batch_size=6)
    assert not run.stages["latents"]["reused"]       # recomputed: chunks draw their own keys
    assert not np.allclose(z4.context[4:], z6.context[4:])


def test_a_run_folder_is_locked_against_a_second_process(tmp_path):
    import subprocess
    import sys

    Run(tmp_path / "run", "toy", "quick", Toy(), verbose=False)
    Run(tmp_path / "run", "toy", "quick", Toy(), verbose=False)   # this process: fine
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from enf_lib.experiments.runner import Run; "
         "Run(sys.argv[1], 'toy', 'quick', {})", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    assert other.returncode != 0
    assert f"is in use by pid {os.getpid()}" in other.stderr


def test_cli_rejects_an_out_that_is_a_file_in_one_line(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["cifar10-classification", "--profile", "quick", "--out", str(file)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is a file" in err and "Traceback" not in err


def test_epoch_batches_cover_every_item_once_per_epoch():
    key = jax.random.key(0)
    seen = np.concatenate([np.asarray(epoch_batch(key, jnp.int32(s), 10, 3)) for s in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist())) and len(seen) == 9


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 1, rngs=rngs)

    def __call__(self, x):
        return self.lin(x)[..., 0]


def test_train_model_fits_a_line_with_ema_and_resumes(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = x @ np.array([2.0, -1.0], np.float32) + 0.5

    def loss_fn(model, batch, key):
        err = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
        return err, {"rmse": jnp.sqrt(err)}

    kwargs = dict(steps=300, batch_size=16, optimizer=optax.adam(0.05), key=jax.random.key(1))
    model, log = train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, **kwargs)
    np.testing.assert_allclose(model(x), y, atol=1e-2)
    assert log.history["rmse"][-1][1] < 1e-2
    ema, _ = train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, ema_decay=0.9, **kwargs)
    np.testing.assert_allclose(ema(x), y, atol=5e-2)
    # Interrupted at 100 steps and resumed: the same parameters as one uninterrupted run.
    ckpt = tmp_path / "ckpt"
    train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, **{**kwargs, "steps": 100},
                checkpoint_dir=ckpt, checkpoint_every=50)
    resumed, _ = train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, **kwargs,
                             checkpoint_dir=ckpt)
    np.testing.assert_allclose(resumed.lin.kernel[...], model.lin.kernel[...], rtol=1e-5)
    with pytest.raises(ValueError, match="beyond the requested steps=100"):
        train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, **{**kwargs, "steps": 100},
                    checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="differ in length"):
        train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y[:5]}, **kwargs)
    y[3] = np.nan
    with pytest.raises(ValueError, match=r"data\['y'\] contains NaN"):
        train_model(Linear(nnx.Rngs(0)), loss_fn, {"x": x, "y": y}, **kwargs)


def test_train_model_sees_every_item_once_per_epoch():
    seen = []

    def loss_fn(model, batch, key):
        jax.debug.callback(lambda i: seen.append(np.asarray(i)), batch["i"], ordered=True)
        return jnp.mean(model(batch["x"]) ** 2), {}

    data = {"x": np.zeros((12, 2), np.float32), "i": np.arange(12)}
    train_model(Linear(nnx.Rngs(0)), loss_fn, data, steps=9, batch_size=4,
                optimizer=optax.sgd(0.1), key=jax.random.key(0), log_every=1)
    epochs = np.stack(seen).reshape(3, 12)          # 9 steps of 4 items: 3 epochs of 12
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(12))
    assert not np.array_equal(epochs[0], epochs[1])  # a new permutation each epoch


def test_train_model_refuses_a_checkpoint_of_other_data_or_another_key(tmp_path):
    data = {"x": np.zeros((8, 2), np.float32)}
    loss_fn = lambda model, batch, key: (jnp.mean(model(batch["x"]) ** 2), {})

    def train(data, key):
        return train_model(Linear(nnx.Rngs(0)), loss_fn, data, steps=2, batch_size=4,
                           optimizer=optax.sgd(0.1), key=key, checkpoint_dir=tmp_path)

    train(data, jax.random.key(0))
    with pytest.raises(ValueError, match="another configuration"):
        train({"x": np.ones((8, 2), np.float32)}, jax.random.key(0))
    with pytest.raises(ValueError, match="another configuration"):
        train(data, jax.random.key(1))


class Scalar(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))


def test_ema_is_debiased_so_a_constant_target_is_reached():
    # One SGD step at rate 0.5 on (w - 3)^2 puts w at 3 for good. An EMA started at the initial
    # w = 0 would still hold 99.8 % of it after 20 steps at decay 0.9999; a debiased one is 3.
    loss_fn = lambda model, batch, key: ((model.w[...] - 3.0) ** 2, {})
    model, _ = train_model(Scalar(), loss_fn, {"x": np.zeros((4, 1), np.float32)}, steps=20,
                           batch_size=2, optimizer=optax.sgd(0.5), key=jax.random.key(0),
                           ema_decay=0.9999)
    np.testing.assert_allclose(model.w[...], 3.0, rtol=1e-3)


def test_padded_batches_share_one_shape_and_cover_every_item():
    from enf_lib.batching import num_batches, padded_batches

    tree = {"a": np.arange(10), "b": jnp.arange(20.0).reshape(10, 2)}
    batches = list(padded_batches(tree, 4))
    assert len(batches) == num_batches(10, 4) == 3
    assert [n for _, n in batches] == [4, 4, 2]
    assert all(b["a"].shape == (4,) and b["b"].shape == (4, 2) for b, _ in batches)
    assert isinstance(batches[-1][0]["b"], jax.Array)
    np.testing.assert_array_equal(np.concatenate([b["a"][:n] for b, n in batches]), tree["a"])
    (single, n), = padded_batches(tree, 16)            # one short batch stays unpadded
    assert n == 10 and single["a"].shape == (10,)
    with pytest.raises(ValueError, match="batch_size"):
        next(padded_batches(tree, 0))


def test_random_subsets_are_distinct_and_uniform():
    from enf_lib.batching import random_subset

    draws = jax.vmap(lambda k: random_subset(k, 10, 3))(jax.random.split(jax.random.key(0), 4000))
    assert draws.shape == (4000, 3)
    assert all(len(set(row)) == 3 for row in np.asarray(draws[:200]).tolist())
    counts = np.bincount(np.asarray(draws).ravel(), minlength=10)   # 1,200 expected per index
    assert counts.min() > 1_050 and counts.max() < 1_350, counts
    with pytest.raises(ValueError, match="num <= n"):
        random_subset(jax.random.key(0), 5, 6)
