"""Execute notebooks (MyST sources) the way the book build does, and report the time of each.

Usage: python tools/run_notebook.py notebooks/01_neural_fields.md [...] [--out DIR]
Runs in the quick profile with static progress bars unless ENF_PROFILE / ENF_PROGRESS are set;
the executed notebooks (with outputs) go to --out (default: _build/executed). Exits non-zero when a
cell fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("_build/executed"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    os.environ.setdefault("ENF_PROFILE", "quick")
    os.environ.setdefault("ENF_PROGRESS", "static")
    # Kernels start `python` from PATH: make it this interpreter's environment.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        nb = jupytext.read(path)
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:
            target = args.out / f"{path.stem}.ipynb"
            nbformat.write(nb, target)
            print(f"{path}: {time.perf_counter() - start:.1f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
