"""Benchmark of the jitted meta-training step, ``MetaLearner.train_step``.

For each configuration x MAML order x attention variant, in a fresh subprocess (so compile caches
and the GPU peak-memory counter are independent), this measures:

- compile s: wall time of the first call (trace + XLA compile + one execution), blocked with
  ``jax.block_until_ready``; subtract the median step for the compile alone.
- step ms median / min: ``--repeats`` further calls, each blocked; the state returned by one call
  feeds the next (``train_step`` donates it). The data are random float32 images in [0, 1] of
  shape ``(max(64, batch), H, W, 3)``, created once on the device; each step draws its batch there.
- GFLOP/step: XLA's cost analysis of the compiled program, i.e. what the optimised HLO would
  execute, not a hardware counter. XLA counts the body of a ``while`` loop *once*, whatever its
  trip count, so for a program with a rolled ``lax.scan`` (the first-order inner loop; short
  second-order ones are unrolled, see ``enf_lib.fitting.UNROLL_MAX_STEPS``) it undercounts; that
  raw number is kept as ``gflop_xla``. The table reports ``gflop``, the count of the same step
  traced with every ``lax.scan`` fully unrolled (one extra compile, never executed).
  Achieved GFLOP/s = that count / median step time. When comparing with another code's count,
  check which convention it used (a Python loop unrolls; a ``lax.scan`` is counted once).
- memory MB: XLA's buffer plan of the timed program (``compiled.memory_analysis()``): temporaries
  + arguments + outputs - donated (aliased) bytes. It is a static plan, not a measured peak; on
  CPU it is all there is. On a GPU, ``peak MB`` is the allocator's ``peak_bytes_in_use`` of the
  subprocess (data, state and all executed steps; the unrolled program never runs).
- params: decoder parameters (``enf_lib.model.count_params``).

Run ``python benchmarks/meta_step.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from enf_lib.config import ENFConfig, FitConfig
from enf_lib.fitting import MetaLearner
from enf_lib.model import count_params
from enf_lib.provenance import provenance

# name -> (decoder, fitting without batch/order, image shape)
CONFIGS: dict[str, tuple[ENFConfig, FitConfig, tuple[int, int]]] = {
    "reference": (ENFConfig(), FitConfig(), (32, 32)),
    "large": (ENFConfig(num_latents=64, latent_dim=32, hidden_dim=128, k_nearest=4),
              FitConfig(inner_coords=1024, outer_coords=2048), (64, 64)),
}
ORDERS = {"first": False, "second": True}
ATTENTION = ("knn", "dense")
RESULTS = Path(__file__).resolve().parent / "results"


def choice_list(choices: Any) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list of names from ``choices``."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            what = f"unknown {', '.join(map(repr, bad))}" if bad else "empty list"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(choices)}")
        return names
    return parse


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Trace with every ``jax.lax.scan`` fully unrolled, whatever ``unroll`` its caller asked
    for (for FLOP counting only)."""
    scan = jax.lax.scan

    def unrolled(*args: Any, **kwargs: Any) -> Any:
        return scan(*args, **{**kwargs, "unroll": True})

    jax.lax.scan = unrolled
    try:
        yield
    finally:
        jax.lax.scan = scan


def flops(compiled: Any) -> float:
    """``"flops"`` of a compiled program's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def memory_plan(compiled: Any) -> dict[str, int]:
    """Byte sizes of XLA's buffer plan; ``total`` = temp + argument + output - alias."""
    mem = compiled.memory_analysis()
    sizes = {name: int(getattr(mem, f"{name}_size_in_bytes", 0) or 0)
             for name in ("temp", "argument", "output", "alias")}
    sizes["total"] = sizes["temp"] + sizes["argument"] + sizes["output"] - sizes["alias"]
    return sizes


def learner_for(config: str, order: str, attention: str, batch: int) -> MetaLearner:
    enf, fit, shape = CONFIGS[config]
    if attention == "dense":
        enf = dataclasses.replace(enf, k_nearest=None)
    fit = dataclasses.replace(fit, batch_size=batch, second_order=ORDERS[order])
    return MetaLearner(enf, fit, shape)


def measure(config: str, order: str, attention: str, batch: int, repeats: int) -> dict[str, Any]:
    """Benchmark one combination in this process."""
    learner = learner_for(config, order, attention, batch)
    key = jax.random.key(0)
    state = learner.init(key)
    params = count_params(state.params)
    data = jax.random.uniform(jax.random.key(1), (max(64, batch), *learner.image_shape, 3),
                              jnp.float32)
    jax.block_until_ready(data)

    start = time.perf_counter()
    state, metrics = jax.block_until_ready(learner.train_step(state, data, key))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(learner.train_step(state, data, key))
        times.append(time.perf_counter() - start)

    # The timed program (same jit, same shapes: a cache hit, no second compile).
    compiled = learner.train_step.lower(state, data, key).compile()
    device = jax.devices()[0]
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use") if device.platform != "cpu" else None

    def fresh_step(*args: Any) -> Any:  # a new function: JAX's trace cache would otherwise
        return learner._train_step(*args)  # hand back the jaxpr traced with rolled scans

    with unrolled_scans():
        exact = flops(jax.jit(fresh_step).lower(state, data, key).compile())
    median = statistics.median(times)
    enf, fit = learner.enf, learner.cfg
    return {
        "config": config, "order": order, "attention": attention, "batch": batch,
        "image": list(learner.image_shape), "num_latents": enf.num_latents,
        "latent_dim": enf.latent_dim, "k_nearest": enf.k_nearest, "inner_steps": fit.inner_steps,
        "inner_coords": fit.inner_coords, "outer_coords": fit.outer_coords,
        "compile_s": compile_s, "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(times),
        "step_ms_all": [1e3 * t for t in times],
        "gflop": exact / 1e9, "gflop_xla": flops(compiled) / 1e9,
        "gflops_achieved": exact / 1e9 / median,
        "memory_bytes": memory_plan(compiled), "peak_bytes_in_use": peak,
        "params": params, "platform": device.platform, "final_loss": float(metrics["loss"]),
    }


def run_subprocess(config: str, order: str, attention: str, args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark one combination in a fresh Python process; a failure becomes an error row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", "--configs", config,
           "--orders", order, "--attention", attention, "--batch", str(args.batch),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"config": config, "order": order, "attention": attention, "batch": args.batch,
            "error": f"exit code {proc.returncode}"}


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["config", "order", "attention", "batch", "compile s", "step ms median", "step ms min",
            "GFLOP/step", "GFLOP/s", "memory MB", "peak MB", "params"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["config"], r["order"], r["attention"], str(r["batch"])]
        if "error" in r:
            cells += [f"failed ({r['error']})"] + [""] * (len(head) - 5)
        else:
            peak = r["peak_bytes_in_use"]
            cells += [f"{r['compile_s']:.1f}", f"{r['step_ms_median']:.1f}", f"{r['step_ms_min']:.1f}",
                      f"{r['gflop']:.2f}", f"{r['gflops_achieved']:.1f}",
                      f"{r['memory_bytes']['total'] / 2**20:.0f}",
                      "-" if peak is None else f"{peak / 2**20:.0f}", f"{r['params']:,}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=choice_list(list(CONFIGS)), default=list(CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--orders", type=choice_list(list(ORDERS)), default=list(ORDERS),
                        help="MAML order(s): first, second (default: both)")
    parser.add_argument("--attention", type=choice_list(ATTENTION), default=list(ATTENTION),
                        help="knn (k nearest latents), dense (all latents) (default: both)")
    parser.add_argument("--batch", type=int, default=32, help="signals per outer step (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after the first (default 5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/meta_step-<platform>.json)")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")

    if args.single:  # child: one combination, one JSON line on stdout
        row = measure(args.configs[0], args.orders[0], args.attention[0], args.batch, args.repeats)
        print(json.dumps(row))
        return 0

    # The parent never initialises a JAX backend before the children ran (on a GPU it would
    # pre-allocate most of the memory); provenance() below is the first call that does.
    rows = []
    for config in args.configs:
        for order in args.orders:
            for attention in args.attention:
                print(f"[meta_step] {config} / {order} order / {attention} ...", file=sys.stderr, flush=True)
                rows.append(run_subprocess(config, order, attention, args))
    print(markdown(rows))

    record = provenance(
        benchmark="meta_step", argv=sys.argv, cpu_count=os.cpu_count(),
        cpu_threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        xla_flags=os.environ.get("XLA_FLAGS", ""))
    out = args.out or RESULTS / f"meta_step-{jax.devices()[0].platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": record, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
