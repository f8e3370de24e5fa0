"""Metric logging: always in memory, to Weights & Biases only when asked for.

wandb is optional: it is imported only when a run asks for it (``mode`` "online" or "offline",
from the argument or the ``WANDB_MODE`` environment variable); ``WANDB_MODE=disabled`` always wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from enf_lib._io import write_text


class MetricLogger:
    """Collects ``{name: [(step, value), ...]}`` and mirrors it to wandb when enabled.

    Args:
      wandb_mode: ``None`` (default: read ``WANDB_MODE``, off when unset), ``"disabled"``,
        ``"online"`` or ``"offline"``.
      **wandb_kwargs: passed to ``wandb.init`` (project, name, config, ...).
    """

    MODES = (None, "disabled", "online", "offline")

    def __init__(self, wandb_mode: str | None = None, **wandb_kwargs: Any):
        if wandb_mode not in self.MODES:
            raise ValueError(f"wandb_mode={wandb_mode!r}; choose one of {self.MODES}")
        env = os.environ.get("WANDB_MODE")
        mode = "disabled" if env == "disabled" else (wandb_mode or env or "disabled")
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._run = None
        if mode != "disabled":
            try:
                import wandb
            except ImportError as err:
                raise ImportError(
                    "wandb logging was requested but wandb is not installed: "
                    'pip install "enf_lib[wandb]", or set WANDB_MODE=disabled') from err
            self._run = wandb.init(mode=mode, **wandb_kwargs)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.history.setdefault(name, []).append((int(step), float(value)))
        if self._run is not None:
            self._run.log(dict(metrics), step=int(step))

    def save(self, path: str | os.PathLike) -> None:
        """Write the history as JSON (atomically)."""
        write_text(path, json.dumps(self.history))

    def load(self, path: str | os.PathLike, up_to_step: int | None = None) -> None:
        """Replace the history by the one saved at ``path``, keeping entries up to ``up_to_step``."""
        saved = json.loads(Path(path).read_text())
        limit = float("inf") if up_to_step is None else up_to_step
        self.history = {k: [(s, v) for s, v in pts if s <= limit] for k, pts in saved.items()}

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
