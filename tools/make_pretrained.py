"""Meta-train the course's pretrained decoders and write them into ``enf_lib/pretrained/``.

Each decoder has the configuration of the Part I chapters' ``quick`` profile (the reference
CIFAR-10 ENF, second-order MAML at batch 8, outer learning rate 2e-3) or, for the baselines of
chapter 3, a variant of it and is trained with
:func:`enf_lib.training.meta_train` for more steps and on more images than the chapters can
afford on a CPU. The run is checkpointed under ``--work`` and resumes after an interruption.
The held-out PSNR (the first ``--num-test`` test images, 3 inner steps, key 2) is recorded, and
``tests/test_pretrained.py`` checks that the current code reproduces it.

Usage: python tools/make_pretrained.py [--names cifar10-translation,cifar10-se2]
       [--steps 240] [--num-train 10000] [--num-test 64] [--work DIR] [--out DIR]
Needs CIFAR-10 (ENF_DATA_DIR or a download).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax

from enf_lib import ENFConfig, FitConfig, MetaLearner
from enf_lib.datasets import load_cifar10
from enf_lib.pretrained import PRETRAINED_DIR, save
from enf_lib.provenance import fingerprint, provenance
from enf_lib.training import meta_train

QUICK_FIT = FitConfig(batch_size=8, outer_lr=2e-3)
"""The Part I chapters' ``quick`` profile fitting configuration (00, 03, 04)."""

DECODERS: dict[str, tuple[ENFConfig, FitConfig]] = {
    "cifar10-translation": (ENFConfig(), QUICK_FIT),
    "cifar10-se2": (dataclasses.replace(ENFConfig(), bi_invariant="se2"), QUICK_FIT),
    # The baselines of chapter 3's same-budget comparison, with the same training: the same
    # decoder reading absolute positions (no equivariance), and the same decoder with one global
    # latent of the point cloud's 1,024 context numbers (no locality). The global latent's pose
    # is frozen: it has no place to find, and its pose gradient, summed over every pixel, made the
    # pose rate of 2 diverge (NaN after about 20 steps). A sweep of its context rate over 3, 10,
    # 30 and 100 (80 second-order steps on 2,000 images) found 30, the reference rate, as good as
    # any (14.4 to 15.0 dB held-out).
    "cifar10-absolute": (dataclasses.replace(ENFConfig(), bi_invariant="absolute"), QUICK_FIT),
    "cifar10-global": (dataclasses.replace(ENFConfig(), num_latents=1, latent_dim=1024,
                                           k_nearest=None),
                       dataclasses.replace(QUICK_FIT, lr_pose=0.0)),
}
TRAIN_KEY, EVAL_KEY = 1, 2


def make(name: str, steps: int, num_train: int, num_test: int, work: Path, out: Path) -> None:
    train_images, _ = load_cifar10("train", limit=num_train)
    test_images, _ = load_cifar10("test", limit=num_test)
    enf, fit = DECODERS[name]
    learner = MetaLearner(enf, fit, image_shape=train_images.shape[1:3])
    prov = provenance(tool="make_pretrained")  # before training: the code that trains
    t0 = time.perf_counter()
    state, log = meta_train(learner, learner.init(jax.random.key(0)), train_images, steps=steps,
                            key=jax.random.key(TRAIN_KEY), checkpoint_dir=work / name,
                            checkpoint_every=20, desc=f"meta-training {name}")
    wall = sum(v for _, v in log.history.get("wall_time_s", [])) or time.perf_counter() - t0
    scores = learner.evaluate(state, test_images, jax.random.key(EVAL_KEY))
    held_out = {"num_test": num_test, "eval_key": EVAL_KEY,
                "psnr_before": round(float(scores["psnr_before"].mean()), 4),
                "psnr_after": round(float(scores["psnr_after"].mean()), 4)}
    run = {"steps": steps, "num_train": num_train, "train_key": TRAIN_KEY, "init_key": 0,
           "data_fingerprint": fingerprint(train_images), "wall_time_s": round(wall, 1),
           "history": log.history}
    path = save(name, learner, state, info={"run": run, "held_out": held_out,
                                            "provenance": prov},
                folder=out)
    print(f"{name}: {held_out['psnr_after']:.2f} dB held-out after {steps} steps "
          f"({wall / 60:.1f} min) -> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(DECODERS))
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("checkpoints/pretrained"))
    parser.add_argument("--out", type=Path, default=PRETRAINED_DIR)
    args = parser.parse_args()
    for name in args.names.split(","):
        if name not in DECODERS:
            parser.error(f"unknown decoder {name!r}; choose from {', '.join(DECODERS)}")
        make(name, args.steps, args.num_train, args.num_test, args.work, args.out)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
