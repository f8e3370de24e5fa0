"""Saving and restoring training state with orbax, so a run can resume after an interruption.

A checkpoint folder holds numbered steps (the newest ``max_to_keep`` are kept) and a
``config.json`` describing what was trained; restoring into a run with a different configuration
is refused with a clear error instead of silently loading mismatched parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

T = TypeVar("T")


def config_dict(*configs: Any) -> dict[str, Any]:
    """Merge dataclass configs into one JSON-friendly ``{ClassName: {field: value}}`` dict."""
    return {type(c).__name__: json.loads(json.dumps(dataclasses.asdict(c))) for c in configs}


class Checkpointer:
    """Periodic checkpoints of a pytree (e.g. :class:`enf_lib.fitting.MetaState`).

    Usage::

        with Checkpointer(path, config=config_dict(enf_cfg, fit_cfg)) as ckpt:
            if ckpt.latest_step() is not None:
                state = ckpt.restore(state)
            ...
            ckpt.save(step, state)
    """

    def __init__(self, directory: str | os.PathLike, *, config: dict[str, Any] | None = None,
                 max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_config(config)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    def _check_config(self, config: dict[str, Any] | None) -> None:
        if config is None:
            return
        config = json.loads(json.dumps(config))     # as saved: tuples become lists
        path = self.directory / "config.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != config:
                raise ValueError(
                    f"the checkpoint in {self.directory} was made with another configuration:\n"
                    f"  saved:   {saved}\n  current: {config}\n"
                    "use another folder, or delete this one to start afresh")
        else:
            path.write_text(json.dumps(config, indent=2, sort_keys=True))

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as ``step`` (asynchronously; finished by :meth:`close`)."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state))

    def restore(self, template: T, step: int | None = None) -> T:
        """Restore the newest (or the given) step into the structure, shapes and dtypes of ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
