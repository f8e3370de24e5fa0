"""Checkpoints round-trip, and an interrupted run resumes to the same result."""

import dataclasses

import jax
import numpy as np
import pytest

from enf_lib.checkpoint import Checkpointer, config_dict
from enf_lib.fitting import MetaLearner
from enf_lib.synthetic import shapes_dataset
from enf_lib.training import meta_train

from test_fitting import FIT, TINY


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(tmp_path):
    lrn = MetaLearner(TINY, dataclasses.replace(FIT, meta_sgd=True), (16, 16))
    state = lrn.init(jax.random.key(0))
    state, _ = lrn.train_step(state, shapes_dataset(16, 16), jax.random.key(0))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        restored = ckpt.restore(lrn.init(jax.random.key(9)))
    assert_trees_equal(restored, state)
    assert int(restored.step) == 1


def test_interrupted_training_resumes_to_the_same_state(tmp_path):
    images = shapes_dataset(32, 16)
    lrn = MetaLearner(TINY, FIT, (16, 16))
    key = jax.random.key(3)
    straight, _ = meta_train(lrn, lrn.init(jax.random.key(0)), images, steps=6, key=key)
    # "Interrupted" after 4 steps, then a new process picks up from the checkpoint.
    meta_train(lrn, lrn.init(jax.random.key(0)), images, steps=4, key=key,
               checkpoint_dir=tmp_path, checkpoint_every=2)
    resumed, log = meta_train(lrn, lrn.init(jax.random.key(0)), images, steps=6, key=key,
                              checkpoint_dir=tmp_path, checkpoint_every=2)
    assert [s for s, _ in log.history["loss"]] == [1, 2, 3, 4, 5, 6], "history continues"
    assert [s for s, _ in log.history["wall_time_s"]] == [4, 6], "only the missing steps ran"
    assert_trees_equal(resumed.params, straight.params)
    # A finished run is skipped entirely, and its history is still there.
    skipped, log = meta_train(lrn, lrn.init(jax.random.key(0)), images, steps=6, key=key,
                              checkpoint_dir=tmp_path)
    assert [s for s, _ in log.history["wall_time_s"]] == [4, 6]
    assert_trees_equal(skipped.params, straight.params)


def test_restoring_under_another_configuration_is_refused(tmp_path):
    Checkpointer(tmp_path, config=config_dict(TINY, FIT)).close()
    other = dataclasses.replace(TINY, hidden_dim=64)
    with pytest.raises(ValueError, match="another configuration"):
        Checkpointer(tmp_path, config=config_dict(other, FIT))


def test_a_config_with_tuples_resumes(tmp_path):
    Checkpointer(tmp_path, config={"clip": (1e-6, 1e3)}).close()
    Checkpointer(tmp_path, config={"clip": (1e-6, 1e3)}).close()   # the saved JSON has a list


def test_meta_train_refuses_a_checkpoint_of_another_key_or_other_data(tmp_path):
    images = shapes_dataset(16, 16)
    lrn = MetaLearner(TINY, FIT, (16, 16))
    train = lambda data, key: meta_train(lrn, lrn.init(jax.random.key(0)), data, steps=1,
                                         key=key, checkpoint_dir=tmp_path)
    train(images, jax.random.key(1))
    with pytest.raises(ValueError, match="another configuration"):
        train(images, jax.random.key(2))
    with pytest.raises(ValueError, match="another configuration"):
        train(images[::-1].copy(), jax.random.key(1))
    train(images.copy(), jax.random.key(1))           # the same data and key: skipped


def test_restore_without_checkpoint_raises(tmp_path):
    with Checkpointer(tmp_path) as ckpt, pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore({"a": np.zeros(2)})
