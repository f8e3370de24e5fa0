"""What every experiment shares: configs with command-line overrides, an output folder with
cached stages, per-stage wall times, figures, and ``metrics.json`` with provenance.

An experiment has a frozen dataclass config, a ``PROFILES`` dict of configs (``quick``,
``standard``, ``full``) and ``run(config, run) -> metrics``; its stages cache their results in
the run folder. :meth:`Run.stage_dir` keys each stage, in one place, by its own config, the keys
of the stages it reads, the code version and the data, so rerunning the command skips finished
stages (and resumes an interrupted meta-training) while a changed setting recomputes exactly the
stages downstream of it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydantic

from enf_lib._io import write_npz, write_text
from enf_lib.provenance import code_version, fingerprint, provenance

C = TypeVar("C")

_LOCKS: dict[Path, Any] = {}   # run folders this process holds: resolved path -> open lock file


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and NumPy scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (dataclasses included)."""
    text = json.dumps(to_jsonable(parts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _parse_value(text: str, current: Any) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text                       # a bare word: a string such as se2
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and value is not None and not isinstance(value, type(current)):
        if not (isinstance(current, (int, float)) and isinstance(value, (int, float))
                and not isinstance(value, bool)):
            raise ValueError(f"expected a {type(current).__name__}, got {text!r}")
    return value


def override(config: C, assignments: Sequence[str]) -> C:
    """``config`` with ``"section.field=value"`` (or ``"field=value"``) assignments applied.

    Values are Python literals (``3``, ``1e-3``, ``None``, ``(1, 2)``, ``True``) or bare words
    (strings). The changed dataclass is validated again, so a bad value raises ``ValueError``,
    on one line naming the assignment and the field.
    """
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path:
            raise ValueError(f"override {assignment!r} is not of the form field=value")
        try:
            config = _replace_path(config, path.strip().split("."), text.strip())
        except pydantic.ValidationError as err:     # on one line, for the command line
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                        for e in err.errors(include_url=False)]
            raise ValueError(f"override {assignment!r}: {'; '.join(problems)}") from None
        except ValueError as err:
            raise ValueError(f"override {assignment!r}: {err}") from None
    return config


def _replace_path(obj: Any, path: list[str], text: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ValueError(f"{type(obj).__name__} has no field {head!r}; fields: {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{head!r} is not a section")
        return dataclasses.replace(obj, **{head: _replace_path(current, path[1:], text)})
    if dataclasses.is_dataclass(current):
        raise ValueError(f"{head!r} is a section; set one of its fields")
    return dataclasses.replace(obj, **{head: _parse_value(text, current)})


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------


class RunFolderError(RuntimeError):
    """The run folder cannot be used: a file, not writable, or in use by another process."""


def _lock(folder: Path) -> None:
    """Hold ``folder/.lock`` for the rest of this process: a second process using the same run
    folder at once (which would corrupt its checkpoints) gets a clear error instead."""
    key = folder.resolve()
    if key in _LOCKS:
        return
    try:
        file = open(folder / ".lock", "a+")
    except OSError as err:
        raise RunFolderError(f"cannot write in the run folder {folder}: {err.strerror}") from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        owner = file.read().strip() or "?"
        file.close()
        raise RunFolderError(f"the run folder {folder} is in use by pid {owner}; wait for it, "
                             "or use another --out") from None
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()
    _LOCKS[key] = file


class Run:
    """One run of an experiment in the folder ``out``.

    ``out/`` holds ``config.json`` (the config of the latest run), one folder per cached stage
    (``<stage>-<key>/``), ``figures/*.png`` and, at the end, ``metrics.json``. A stage's key
    (:meth:`stage_dir`) covers its own config, the keys of the stages it reads, the code version
    and a fingerprint of the data (:meth:`use_data`).

    Args:
      out: the run folder (created).
      experiment: the experiment's name, e.g. ``"cifar10-classification"``.
      profile: the profile the config came from (``quick``, ``standard``, ``full`` or ``custom``).
      config: the experiment config (a dataclass).
      verbose: print a line when each stage starts and ends.
    """

    def __init__(self, out: str | os.PathLike, experiment: str, profile: str, config: Any, *,
                 verbose: bool = True):
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(f"the run folder {self.out} is a file") from None
        except PermissionError as err:
            raise RunFolderError(f"cannot create the run folder {self.out}: {err.strerror}") from None
        _lock(self.out)
        self.experiment, self.profile, self.config = experiment, profile, config
        self.verbose = verbose
        self.stages: dict[str, dict[str, Any]] = {}
        self.code_version = code_version()
        self.data_id: str | None = None
        self.keys: dict[str, str] = {}     # stage name -> key, for the stages that read it
        self._t0 = time.perf_counter()
        (self.out / "config.json").write_text(json.dumps(
            {"experiment": experiment, "profile": profile, "config": to_jsonable(config)},
            indent=2))

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def use_data(self, *arrays: Any) -> None:
        """Key every later stage by a fingerprint of ``arrays``, the data the run loaded (so
        another copy of a data set, or other images, never reuses a stage)."""
        self.data_id = fingerprint(*arrays)

    def stage_dir(self, name: str, config: Any = None, *, reads: Sequence[str] = ()) -> Path:
        """The folder of stage ``name`` (created, with ``key.json``).

        Its key is derived here, and only here, from everything the stage depends on: its own
        ``config`` (the settings, seeds and data selection it uses), the keys of the stages it
        ``reads`` (named stages that ran earlier in this run, so that a change upstream reaches
        every stage downstream), the code version and the fingerprint of the loaded data
        (:meth:`use_data`, which must come first).
        """
        if self.data_id is None:
            raise RuntimeError("call run.use_data(...) with the loaded data before any stage")
        missing = [r for r in reads if r not in self.keys]
        if missing:
            raise RuntimeError(f"stage {name!r} reads {missing}, which did not run earlier in "
                               "this run: run those stages first")
        keyed = {"config": config, "reads": {r: self.keys[r] for r in reads},
                 "code_version": self.code_version, "data": self.data_id}
        self.keys[name] = key = digest(name, keyed)
        path = self.out / f"{name}-{key}"
        path.mkdir(parents=True, exist_ok=True)
        key_file = path / "key.json"
        if not key_file.exists():
            write_text(key_file, json.dumps(to_jsonable(keyed), indent=2))
        return path

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage: ``with run.stage("fit_latents") as record: ...``.

        The record gets ``wall_time_s`` (this run). A stage that reused earlier results sets
        ``record["reused"] = True`` and ``record["compute_time_s"]`` to the time it took when it
        was computed; :meth:`metrics` reports that time for it.
        """
        record: dict[str, Any] = {"reused": False}
        self.log(f"[{self.experiment}] {name} ...")
        t0 = time.perf_counter()
        yield record
        record["wall_time_s"] = round(time.perf_counter() - t0, 3)
        record.setdefault("compute_time_s", record["wall_time_s"])
        self.stages[name] = record
        how = "reused" if record["reused"] else "done"
        self.log(f"[{self.experiment}] {name} {how} in {record['wall_time_s']:.1f} s")

    def cached(self, name: str, config: Any, compute: Callable[[], dict[str, np.ndarray]], *,
               reads: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """A stage whose result is a dict of arrays, saved as ``<stage dir>/arrays.npz``
        (keyed by ``config`` and ``reads`` as in :meth:`stage_dir`).

        Loaded when present (the stage is then marked reused), else computed and saved.
        """
        with self.stage(name) as record:
            folder = self.stage_dir(name, config, reads=reads)
            path, timing = folder / "arrays.npz", folder / "timing.json"
            if path.exists() and timing.exists():
                with np.load(path) as f:
                    arrays = {k: f[k] for k in f.files}
                record.update(reused=True,
                              compute_time_s=json.loads(timing.read_text())["compute_time_s"])
                return arrays
            t0 = time.perf_counter()
            arrays = compute()
            write_npz(path, **arrays)
            write_text(timing, json.dumps({"compute_time_s": round(time.perf_counter() - t0, 3)}))
            return arrays

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png``."""
        folder = self.out / "figures"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path

    def write_metrics(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json``: the results, per-stage wall times and provenance."""
        metrics = {
            "experiment": self.experiment,
            "profile": self.profile,
            **to_jsonable(results),
            "wall_time_s": {name: r["compute_time_s"] for name, r in self.stages.items()},
            "stages": self.stages,
            "run_wall_time_s": round(time.perf_counter() - self._t0, 3),
            "provenance": provenance(config=to_jsonable(self.config)),
        }
        tmp = self.out / "metrics.tmp.json"
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, self.out / "metrics.json")
        return metrics


def load_metrics(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``folder/metrics.json`` as a dict, or ``None`` when the folder has none."""
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None
