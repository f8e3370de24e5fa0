"""What the decoder's defaults do to the 3-step fit: an ablation at equal steps.

Every variant starts from the same initialisation and meta-trains on the same batches of real
CIFAR-10 training images (second order, batch 8, all pixels, the reference configuration unless
the variant changes it). Reported per variant: the held-out PSNR after the 3 inner steps with the
*untrained* decoder, and after each of ``--steps`` outer steps (256 test images, 3 inner steps
from the grid, all pixels). Step counts, not seconds, so the table does not depend on the
machine's load; step times are measured by ``meta_step.py``.

Variants run in parallel subprocesses, one per CPU core (``--jobs``), each on one thread.

Usage: python benchmarks/decoder_ablation.py [--steps 40,80] [--variants a,b] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enf_lib.experiments.runner import override, to_jsonable
from psnr_budget import Setup  # the reference setup (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent


# name -> overrides of the reference setup
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "logits / sqrt(att_dim)": ["enf.attention_scale=0.125"],
    "GELU output head": ["enf.head_depth=1"],
    "former defaults (both)": ["enf.attention_scale=0.125", "enf.head_depth=1"],
    "values hidden_dim wide (reference)": ["enf.value_dim=128"],
    "Meta-SGD": ["fit.meta_sgd=True"],
    "outer lr 2e-3": ["fit.outer_lr=2e-3"],
    "outer lr 2e-3 + Meta-SGD (the budget benchmark's tuned setup)": [
        "fit.outer_lr=2e-3", "fit.meta_sgd=True"],
}


def measure(overrides: list[str], steps: list[int]) -> dict[str, Any]:
    """One variant, in this process."""
    import jax
    import jax.numpy as jnp

    from enf_lib import MetaLearner
    from enf_lib.datasets import load_cifar10

    setup = override(Setup(), overrides)
    learner = MetaLearner(setup.enf, setup.fit, (32, 32))
    train = jnp.asarray(load_cifar10("train")[0], jnp.float32) / 255
    test = load_cifar10("test", limit=256)[0]
    state, key = learner.init(jax.random.key(0)), jax.random.key(1)

    def held_out() -> float:
        scores = learner.evaluate(state, test, jax.random.key(2), batch_size=64)  # bounded memory
        return round(float(scores["psnr_after"].mean()), 2)

    curve = {0: held_out()}
    for step in range(1, max(steps) + 1):
        state, _ = learner.train_step(state, train, key)
        if step in steps:
            curve[step] = held_out()
    row: dict[str, Any] = {"psnr_by_steps": curve, "config": to_jsonable(setup)}
    if setup.fit.meta_sgd:
        row["rates_median"] = {n: float(jnp.median(getattr(state.rates, n)))
                               for n in ("pose", "context")}
    return row


def run_subprocess(name: str, steps: list[int]) -> dict[str, Any]:
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                                     "intra_op_parallelism_threads=1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", name,
           "--steps", ",".join(map(str, steps))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return {"variant": name, **json.loads(lines[-1])}
    return {"variant": name, "error": f"exit code {proc.returncode}"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="40,80", help="outer steps to evaluate after")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated names (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decoder_ablation-cpu.json")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = sorted(int(s) for s in args.steps.split(","))
    if args.single:
        print(json.dumps(measure(VARIANTS[args.single], steps)))
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda n: run_subprocess(n, steps), names))
    for r in rows:
        print(r["variant"], r.get("psnr_by_steps", r.get("error")), file=sys.stderr)

    from enf_lib.provenance import provenance
    record = provenance(benchmark="decoder_ablation", argv=sys.argv, jobs=args.jobs,
                        setup=to_jsonable(Setup()), test_images=256,
                        note="second order, batch 8, all pixels; PSNR after 3 inner steps")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": record, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
