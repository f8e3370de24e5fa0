"""Held-out reconstruction PSNR after a fixed wall-clock budget of meta-training.

The comparison of ENF_NOTES section 5: meta-train on all 50,000 CIFAR-10 training images for a
fixed wall time, then fit 256 held-out test images (3 inner steps from the grid initialisation on
all pixels, predictions clipped to [0, 1]) and report their mean PSNR. Compilation and the
evaluations are not counted in the budget; they are reported separately.

Setups (``--setups``, each run in first and second order, ``--orders``):

- ``reference``: the library's defaults at batch 8, which are the reference CIFAR-10
  configuration of the minimal reference code (16 latents x 64, hidden 128, 3 heads, k = 4,
  inner rates (2, 30, 0), 3 inner steps, Adam 5e-4, all 1,024 pixels).
- ``tuned``: the same decoder, with the outer learning rate and Meta-SGD chosen by measurement
  for this budget (see ``benchmarks/README.md``).

``--set section.field=value`` changes a field of every setup (``enf.*`` or ``fit.*``).

Usage: python benchmarks/psnr_budget.py [--seconds 300] [--setups reference,tuned]
       [--orders first,second] [--set fit.outer_lr=1e-3 ...] [--out FILE]
Needs CIFAR-10 (ENF_DATA_DIR or a download).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from enf_lib import ENFConfig, FitConfig, MetaLearner
from enf_lib.datasets import load_cifar10
from enf_lib.experiments.runner import override, to_jsonable
from enf_lib.provenance import provenance


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a budget run trains: the decoder and its meta-learning."""

    enf: ENFConfig = ENFConfig()
    fit: FitConfig = FitConfig(batch_size=8)


SETUPS = {
    "reference": Setup(),
    "tuned": Setup(fit=FitConfig(batch_size=8, outer_lr=2e-3, meta_sgd=True)),
}
ORDERS = {"first": False, "second": True}


def run(setup: Setup, seconds: float, evals_at: list[float], train: jax.Array,
        test: np.ndarray) -> dict[str, Any]:
    """Meta-train for ``seconds`` of wall time; held-out PSNR after each time in ``evals_at``."""
    learner = MetaLearner(setup.enf, setup.fit, (32, 32))
    state = learner.init(jax.random.key(0))
    key = jax.random.key(1)

    def held_out(state: Any) -> float:
        scores = learner.evaluate(state, test, jax.random.key(2), batch_size=64)  # bounded memory
        return round(float(scores["psnr_after"].mean()), 2)

    before = held_out(state)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(learner.train_step(state, train, key))
    compile_s = time.perf_counter() - start
    steps, elapsed, curve = 1, 0.0, []
    for stop in evals_at:
        while elapsed < stop:
            start = time.perf_counter()
            state, metrics = jax.block_until_ready(learner.train_step(state, train, key))
            elapsed += time.perf_counter() - start
            steps += 1
        curve.append({"train_s": round(elapsed, 1), "steps": steps, "psnr": held_out(state)})
        print(f"[psnr_budget] {curve[-1]}", file=sys.stderr, flush=True)
    row = {"second_order": setup.fit.second_order, "compile_s": round(compile_s, 1),
           "steps": steps, "train_s": round(elapsed, 1),
           "step_s": round(elapsed / (steps - 1), 3), "psnr_before": before,
           "psnr_after": curve[-1]["psnr"], "curve": curve,
           "final_train_loss": float(metrics["loss"])}
    if setup.fit.meta_sgd:
        row["learned_rates_median"] = {name: float(np.median(getattr(state.rates, name)))
                                       for name in ("pose", "context", "window")}
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--evals", default="0.25,0.5,1",
                        help="fractions of the budget after which to evaluate (default 0.25,0.5,1)")
    parser.add_argument("--setups", default="reference,tuned",
                        help=f"comma-separated, from {', '.join(SETUPS)}")
    parser.add_argument("--orders", default="first,second")
    parser.add_argument("--test", type=int, default=256, help="held-out test images (default 256)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override a field of every setup, e.g. fit.outer_lr=1e-3")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/psnr_budget-<platform>.json)")
    args = parser.parse_args(argv)
    names = args.setups.split(",")
    orders = args.orders.split(",")
    for name in names:
        if name not in SETUPS:
            parser.error(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}")
    for order in orders:
        if order not in ORDERS:
            parser.error(f"unknown order {order!r}; choose first, second")
    try:
        setups = {name: override(SETUPS[name], args.set) for name in names}
    except ValueError as err:
        parser.error(str(err))
    evals_at = sorted(float(f) * args.seconds for f in args.evals.split(","))

    train = jnp.asarray(load_cifar10("train")[0], jnp.float32) / 255
    test = load_cifar10("test", limit=args.test)[0]
    rows = []
    for name, setup in setups.items():
        for order in orders:
            setup_o = dataclasses.replace(
                setup, fit=dataclasses.replace(setup.fit, second_order=ORDERS[order]))
            print(f"[psnr_budget] {name} / {order} order ...", file=sys.stderr, flush=True)
            row = {"setup": name, "order": order, **run(setup_o, args.seconds, evals_at, train, test),
                   "config": to_jsonable(setup_o)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("config", "curve")}),
                  flush=True)
    out = args.out or (Path(__file__).parent / "results"
                       / f"psnr_budget-{jax.devices()[0].platform}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = provenance(benchmark="psnr_budget", argv=sys.argv, budget_s=args.seconds,
                        test_images=args.test, overrides=args.set, cpu_count=os.cpu_count(),
                        xla_flags=os.environ.get("XLA_FLAGS", ""))
    out.write_text(json.dumps({"provenance": record, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
