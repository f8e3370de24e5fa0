"""Held-out reconstruction PSNR after a fixed wall-clock budget of meta-training.

The comparison of ENF_NOTES section 5: the reference CIFAR-10 configuration (16 latents x 64,
hidden 128, 3 heads, k = 4, inner rates (2, 30, 0), 3 inner steps, Adam 5e-4), batch 8, all 1,024
pixels, trained on real CIFAR-10 training images for a fixed wall time, then evaluated on 256
held-out test images (3 inner steps from the grid initialisation, predictions clipped to [0, 1]).
Compilation is not counted in the budget; it is reported separately.

Usage: python benchmarks/psnr_budget.py [--seconds 300] [--orders first,second] [--out FILE]
Needs CIFAR-10 (ENF_DATA_DIR or a download).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from enf_lib import ENFConfig, FitConfig, MetaLearner
from enf_lib.datasets import load_cifar10
from enf_lib.provenance import provenance


def run(second_order: bool, seconds: float, train: jax.Array, test: jax.Array) -> dict:
    learner = MetaLearner(ENFConfig(), FitConfig(batch_size=8, second_order=second_order),
                          (32, 32))
    state = learner.init(jax.random.key(0))
    key = jax.random.key(1)
    before = learner.evaluate(state, test, jax.random.key(2))["psnr_after"].mean()
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(learner.train_step(state, train, key))
    compile_s = time.perf_counter() - start
    steps, start = 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        state, metrics = jax.block_until_ready(learner.train_step(state, train, key))
        steps += 1
    train_s = time.perf_counter() - start
    after = learner.evaluate(state, test, jax.random.key(2))["psnr_after"].mean()
    return {"order": "second" if second_order else "first", "compile_s": round(compile_s, 1),
            "steps": steps, "train_s": round(train_s, 1),
            "step_s": round(train_s / (steps - 1), 3),
            "psnr_before": round(float(before), 2), "psnr_after": round(float(after), 2)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--orders", default="first,second")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/psnr_budget-<platform>.json)")
    args = parser.parse_args(argv)
    train = jnp.asarray(load_cifar10("train")[0], jnp.float32) / 255
    test = load_cifar10("test", limit=256)[0]
    rows = []
    for order in args.orders.split(","):
        if order not in ("first", "second"):
            parser.error(f"unknown order {order!r}; choose first, second")
        rows.append(run(order == "second", args.seconds, train, test))
        print(json.dumps(rows[-1]), flush=True)
    out = args.out or (Path(__file__).parent / "results"
                       / f"psnr_budget-{jax.devices()[0].platform}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = provenance(benchmark="psnr_budget", argv=sys.argv, budget_s=args.seconds)
    out.write_text(json.dumps({"provenance": record, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
