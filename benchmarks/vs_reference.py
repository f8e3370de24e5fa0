"""Step time of the minimal reference implementation against ``enf_lib``, in one process.

The machines these benchmarks run on are shared and their speed drifts by tens of percent from
one day to the next, so a speed-up is only meaningful when both codes are timed together. This
script builds the reference's CIFAR-10 outer step (its ``recon_outer_step``: 3 inner SGD steps in
a ``lax.scan``, Adam 5e-4, first or second order) from a checkout of the reference repository,
and ``MetaLearner.train_step`` at the same configuration (``ENFConfig()``, batch 8, all 1,024
pixels), then alternates their timed calls so that drift hits both alike.

    .venv/bin/python benchmarks/vs_reference.py --reference /path/to/enf-min-jax

The reference code is not part of this repository; fetch it yourself (it is public). Writes
``benchmarks/results/vs_reference-<platform>.json`` with provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from enf_lib import ENFConfig, FitConfig, MetaLearner
from enf_lib.provenance import provenance

BATCH, LATENTS, LATENT_DIM, INNER_LR, INNER_STEPS = 8, 16, 64, (2.0, 30.0, 0.0), 3


def reference_step(first_order: bool) -> Callable[[], None]:
    """A blocked call of the reference's jitted outer step on a fixed random batch."""
    from enf.bi_invariants import TranslationBI
    from enf.model import EquivariantNeuralField
    from enf.utils import create_coordinate_grid, initialize_latents

    model = EquivariantNeuralField(num_hidden=128, att_dim=64, num_heads=3, num_out=3,
                                   emb_freq=(3.0, 5.0), nearest_k=4, bi_invariant=TranslationBI())
    coords = create_coordinate_grid(batch_size=BATCH, img_shape=(32, 32, 3))
    key = jax.random.PRNGKey(55)

    def latents(batch: int, k: jax.Array):
        return initialize_latents(batch_size=batch, num_latents=LATENTS, latent_dim=LATENT_DIM,
                                  data_dim=2, bi_invariant_cls=TranslationBI, key=k,
                                  noise_scale=0.1)

    params = model.init(key, coords, *latents(1, key))
    opt = optax.adam(5e-4)

    def inner(p, img, k):
        def loss(z):
            out = model.apply(p, coords, *z)
            return jnp.sum(jnp.mean((out - img) ** 2, axis=(1, 2)))

        def step(z, _):
            grads = jax.grad(loss)(z)
            return jax.tree.map(lambda a, g, lr: a - lr * g, z, grads, INNER_LR), None

        z, _ = jax.lax.scan(step, latents(BATCH, k), None, length=INNER_STEPS)
        if first_order:
            z = jax.lax.stop_gradient(z)
        return loss(z)

    @jax.jit
    def outer(p, opt_state, img, k):
        k, sub = jax.random.split(k)
        loss, grads = jax.value_and_grad(inner)(p, img, k)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(p, updates), opt_state, sub, loss

    img = jax.random.uniform(jax.random.key(3), (BATCH, 32 * 32, 3))
    state = [params, opt.init(params), key]

    def call() -> None:
        *new, loss = outer(*state[:2], img, state[2])
        state[:] = new
        jax.block_until_ready(loss)
    return call


def enf_lib_step(first_order: bool) -> Callable[[], None]:
    """A blocked call of ``MetaLearner.train_step`` at the same configuration."""
    learner = MetaLearner(ENFConfig(), FitConfig(batch_size=BATCH, second_order=not first_order),
                          (32, 32))
    data = jax.random.uniform(jax.random.key(1), (64, 32, 32, 3))
    state = [learner.init(jax.random.key(0))]

    def call() -> None:
        state[0], metrics = learner.train_step(state[0], data, jax.random.key(1))
        jax.block_until_ready(metrics)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="checkout of the reference repository (holds enf/model.py)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.reference / "enf" / "model.py").is_file():
        parser.error(f"{args.reference} does not hold enf/model.py (the reference checkout)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    sys.path.insert(0, str(args.reference.resolve()))

    rows = []
    for order in ("first", "second"):
        calls = {"reference": reference_step(order == "first"),
                 "enf_lib": enf_lib_step(order == "first")}
        row: dict[str, object] = {"order": order, "batch": BATCH}
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            row[f"{name}_compile_s"] = time.perf_counter() - start
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():       # alternate: drift hits both alike
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            row[f"{name}_step_s_median"] = statistics.median(ts)
            row[f"{name}_step_s_all"] = ts
        row["speedup"] = row["reference_step_s_median"] / row["enf_lib_step_s_median"]
        print(f"{order} order: reference {row['reference_step_s_median']:.2f} s, enf_lib "
              f"{row['enf_lib_step_s_median']:.2f} s per step: {row['speedup']:.2f}x", flush=True)
        rows.append(row)

    out = args.out or (Path(__file__).parent / "results"
                       / f"vs_reference-{jax.devices()[0].platform}.json")
    record = provenance(benchmark="vs_reference", argv=sys.argv, repeats=args.repeats)
    out.write_text(json.dumps({"provenance": record, "rows": rows}, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
