"""The pretrained decoders: saving and loading, refusing mismatches, and the committed ones still
reproducing the held-out PSNR they were recorded with."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enf_lib import ENFConfig, FitConfig, MetaLearner
from enf_lib.datasets import load_cifar10
from enf_lib.pretrained import available, load, meta_train_or_load, save

ROOT = Path(__file__).resolve().parents[1]
TINY = ENFConfig(num_latents=4, latent_dim=8, hidden_dim=16, att_dim=8, num_heads=1,
                 num_freqs=4, k_nearest=2)
FIT = FitConfig(batch_size=2, second_order=False)


def _learner(enf: ENFConfig = TINY, fit: FitConfig = FIT) -> MetaLearner:
    return MetaLearner(enf, fit, image_shape=(8, 8))


def _images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_save_load_round_trip(tmp_path: Path) -> None:
    learner = _learner()
    state, history, source = meta_train_or_load(learner, _images(), pretrained=None, steps=2,
                                                key=jax.random.key(1), log_every=1)
    assert source.startswith("meta-trained here: 2 outer steps on 4 images")
    assert history["loss"][-1][0] == 2
    save("tiny", learner, state, folder=tmp_path,
         info={"run": {"history": history, "steps": 2, "num_train": 4, "wall_time_s": 1.0},
               "held_out": {"psnr_after": 12.0, "num_test": 4},
               "provenance": {"device": "cpu", "code_version": "x"}})
    assert available(tmp_path) == ["tiny"]
    loaded = load("tiny", learner, folder=tmp_path)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                        (state.params, state.rates), (loaded.state.params, loaded.state.rates))
    assert all(jax.tree.leaves(same)) and int(loaded.state.step) == 2
    assert loaded.history["loss"] == [tuple(p) for p in history["loss"]]
    assert "'tiny': 2 outer steps on 4 CIFAR-10" in loaded.describe()
    # The loaded state decodes and fits exactly like the saved one.
    z = learner.fit(state, _images(2), jax.random.key(3))
    np.testing.assert_array_equal(learner.decode(state, z), learner.decode(loaded.state, z))


def test_load_refuses_other_configs_and_missing_names(tmp_path: Path) -> None:
    learner = _learner()
    save("tiny", learner, learner.init(jax.random.key(0)), folder=tmp_path,
         info={"run": {"history": {}}})
    with pytest.raises(ValueError, match="another configuration"):
        load("tiny", _learner(dataclasses.replace(TINY, bi_invariant="se2")), folder=tmp_path)
    with pytest.raises(ValueError, match="another configuration"):
        load("tiny", _learner(fit=dataclasses.replace(FIT, lr_context=10.0)), folder=tmp_path)
    with pytest.raises(ValueError, match="another configuration"):
        load("tiny", MetaLearner(TINY, FIT, image_shape=(16, 16)), folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="available: \\['tiny'\\]"):
        load("other", learner, folder=tmp_path)


def test_load_refuses_a_changed_parameter_structure(tmp_path: Path) -> None:
    learner = _learner()
    path = save("tiny", learner, learner.init(jax.random.key(0)), folder=tmp_path,
                info={"run": {"history": {}}})
    path.write_text(path.read_text().replace("['params']", "['old_params']"))
    with pytest.raises(ValueError, match="another parameter structure"):
        load("tiny", learner, folder=tmp_path)


def test_notebooks_name_only_shipped_decoders() -> None:
    """Every pretrained name a chapter's profile asks for is shipped with the package."""
    names = set()
    for nb in sorted((ROOT / "notebooks").glob("*.md")):
        for name in re.findall(r'pretrained="([^"]+)"', nb.read_text()):
            names |= {name.format(b) for b in ("translation", "se2")} if "{}" in name else {name}
    assert names, "no chapter loads a pretrained decoder"
    assert names <= set(available()), f"missing: {sorted(names - set(available()))}"


def _configs(record: dict) -> tuple[ENFConfig, FitConfig]:
    fit = {k: tuple(v) if isinstance(v, list) else v for k, v in record["FitConfig"].items()}
    return ENFConfig(**record["ENFConfig"]), FitConfig(**fit)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", available())
def test_shipped_decoder_reproduces_its_recorded_psnr(
        name: str, real_cifar10: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to the decoder or the fitting that changes what the shipped parameters compute
    fails here: remake them with tools/make_pretrained.py."""
    root, cache = real_cifar10
    monkeypatch.setenv("ENF_CACHE_DIR", str(cache))
    record = json.loads((ROOT / "enf_lib" / "pretrained" / f"{name}.json").read_text())
    learner = MetaLearner(*_configs(record["config"]), image_shape=tuple(record["image_shape"]))
    loaded = load(name, learner)
    held = record["held_out"]
    test_images, _ = load_cifar10("test", limit=held["num_test"], data_dir=root, download=False)
    scores = learner.evaluate(loaded.state, test_images, jax.random.key(held["eval_key"]))
    assert abs(float(scores["psnr_after"].mean()) - held["psnr_after"]) < 0.05
    assert held["psnr_after"] > held["psnr_before"] + 5
