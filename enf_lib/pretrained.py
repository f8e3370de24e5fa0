"""Pretrained decoders that ship with the course, so a chapter shows a well-trained ENF in seconds.

Each decoder is two files in ``enf_lib/pretrained/`` (installed with the package): ``NAME.npz``
holds the decoder parameters and inner rates, ``NAME.json`` the configurations they were
meta-trained with, the image shape, the training run (steps, images, data fingerprint, seeds,
wall time, curves), the held-out PSNR it reached and the provenance of that run. They are made
by ``tools/make_pretrained.py`` with :func:`enf_lib.training.meta_train`, the same code the
chapters run, and a test checks that the current code still reproduces the recorded PSNR.

A decoder is loaded only into a learner with exactly the recorded configuration; anything else
is refused with a clear error rather than decoding with mismatched parameters.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from enf_lib._io import write_npz, write_text
from enf_lib.checkpoint import config_dict
from enf_lib.fitting import MetaLearner, MetaState
from enf_lib.training import meta_train

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass(frozen=True)
class Pretrained:
    """A loaded decoder: ``state`` (parameters and rates; a fresh optimiser state, ``step`` the
    outer steps it was trained for), ``history`` (``{metric: [(step, value), ...]}`` of its
    training run) and ``info`` (everything recorded with it)."""

    state: MetaState
    history: dict[str, list[tuple[int, float]]]
    info: dict[str, Any]

    def describe(self) -> str:
        """One line for a reader: what was loaded and how it was made."""
        run, prov = self.info["run"], self.info["provenance"]
        return (f"pretrained decoder {self.info['name']!r}: {run['steps']:,} outer steps on "
                f"{run['num_train']:,} CIFAR-10 training images, {run['wall_time_s'] / 60:.1f} min "
                f"on {prov['device']} (enf_lib {prov['code_version']}); held-out PSNR "
                f"{self.info['held_out']['psnr_after']:.2f} dB on {self.info['held_out']['num_test']} "
                "test images")


def _leaves(state: MetaState) -> list[tuple[str, Any]]:
    """``(path, leaf)`` of the saved part of a state: the decoder parameters and inner rates."""
    tree = {"params": state.params, "rates": state.rates}
    return [(jax.tree_util.keystr(p), leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def save(name: str, learner: MetaLearner, state: MetaState, *, info: dict[str, Any],
         folder: str | os.PathLike = PRETRAINED_DIR) -> Path:
    """Write ``state``'s parameters and rates as ``folder/name.npz`` and, beside them,
    ``name.json`` with ``learner``'s configuration and ``info``; returns the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    leaves = _leaves(state)
    write_npz(folder / f"{name}.npz", **{f"a{i}": np.asarray(x) for i, (_, x) in enumerate(leaves)})
    record = {"name": name, "config": config_dict(learner.enf, learner.cfg),
              "image_shape": list(learner.image_shape), "steps": int(state.step),
              "leaves": [path for path, _ in leaves], **info}
    path = folder / f"{name}.json"
    write_text(path, json.dumps(record, indent=1))
    return path


def available(folder: str | os.PathLike = PRETRAINED_DIR) -> list[str]:
    """Names of the pretrained decoders in ``folder``."""
    return sorted(p.stem for p in Path(folder).glob("*.json"))


def load(name: str, learner: MetaLearner, *,
         folder: str | os.PathLike = PRETRAINED_DIR) -> Pretrained:
    """The pretrained decoder ``name`` as a state of ``learner``.

    Raises ``FileNotFoundError`` (listing what is there) when it does not exist and ``ValueError``
    when ``learner``'s configuration or image shape is not the recorded one.
    """
    folder = Path(folder)
    path = folder / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no pretrained decoder {name!r} in {folder}; "
                                f"available: {available(folder) or 'none'}")
    info = json.loads(path.read_text())
    current = json.loads(json.dumps(config_dict(learner.enf, learner.cfg)))
    shape = list(learner.image_shape)
    if info["config"] != current or info["image_shape"] != shape:
        raise ValueError(
            f"the pretrained decoder {name!r} was trained with another configuration:\n"
            f"  saved:   {info['config']}, image_shape={info['image_shape']}\n"
            f"  current: {current}, image_shape={shape}\n"
            "train instead (use_pretrained=False), or remake it with tools/make_pretrained.py")
    template = learner.init(jax.random.key(0))
    leaves = _leaves(template)
    if [p for p, _ in leaves] != info["leaves"]:
        raise ValueError(f"the pretrained decoder {name!r} has another parameter structure than "
                         "this version of enf_lib builds; remake it with tools/make_pretrained.py")
    with np.load(folder / f"{name}.npz", allow_pickle=False) as npz:
        arrays = [npz[f"a{i}"] for i in range(len(leaves))]
    for (p, leaf), a in zip(leaves, arrays):
        if a.shape != leaf.shape or a.dtype != leaf.dtype:
            raise ValueError(f"pretrained {name!r}: {p} is {a.shape} {a.dtype}, "
                             f"expected {leaf.shape} {leaf.dtype}")
    treedef = jax.tree.structure({"params": template.params, "rates": template.rates})
    loaded = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])
    state = template.replace(params=loaded["params"], rates=loaded["rates"],
                             step=jnp.asarray(info["steps"], jnp.int32))
    history = {k: [tuple(pt) for pt in v] for k, v in info["run"]["history"].items()}
    return Pretrained(state, history, info)


def meta_train_or_load(learner: MetaLearner, images: np.ndarray | jax.Array, *,
                       pretrained: str | None, steps: int, key: jax.Array,
                       **train_kwargs: Any) -> tuple[MetaState, dict[str, list], str]:
    """Load the pretrained decoder ``pretrained`` into ``learner``, or, when it is ``None``,
    meta-train ``steps`` steps on ``images`` with :func:`enf_lib.training.meta_train`
    (``key`` and ``train_kwargs`` passed on).

    Returns the state, the training history (``{metric: [(step, value), ...]}``) and one line
    saying where the decoder came from.
    """
    if pretrained is not None:
        loaded = load(pretrained, learner)
        return loaded.state, loaded.history, loaded.describe()
    t0 = time.perf_counter()
    state, log = meta_train(learner, learner.init(jax.random.key(0)), images, steps=steps,
                            key=key, **train_kwargs)
    return state, log.history, (f"meta-trained here: {steps:,} outer steps on {len(images):,} "
                                f"images ({time.perf_counter() - t0:.0f} s in this call)")
