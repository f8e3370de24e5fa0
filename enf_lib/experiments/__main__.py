"""Command line: ``python -m enf_lib.experiments TASK --profile P --out DIR [field=value ...]``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from enf_lib.experiments import EXPERIMENTS, make_config, run_experiment
from enf_lib.experiments.runner import RunFolderError, to_jsonable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m enf_lib.experiments",
        description="Run a full ENF experiment: every stage, cached in the output folder, "
                    "then metrics.json and figures.")
    parser.add_argument("task", choices=sorted(EXPERIMENTS))
    parser.add_argument("--profile", default="quick", choices=("quick", "standard", "full"),
                        help="quick: 2 CPU cores, minutes; standard: one GPU, minutes; "
                             "full: paper scale")
    parser.add_argument("--out", help="output folder (required unless --show-config)")
    parser.add_argument("--data-dir", help="local data copies (default: ENF_DATA_DIR)")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    parser.add_argument("overrides", nargs="*", metavar="field=value",
                        help="config overrides, e.g. enf.num_latents=25 meta_steps=2000")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --profile and --out
    try:
        config = make_config(args.task, args.profile, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    if args.show_config:
        print(json.dumps(to_jsonable(config), indent=2))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    if args.data_dir:
        os.environ["ENF_DATA_DIR"] = args.data_dir
    try:
        metrics = run_experiment(args.task, args.profile, args.out, args.overrides)
    except RunFolderError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    # The short entries (the full record is in DIR/metrics.json).
    summary = {k: v for k, v in metrics.items()
               if k not in ("provenance", "stages") and len(json.dumps(v)) < 300}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
