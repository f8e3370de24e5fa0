"""Progress bars that work in a terminal, in a live notebook, and in a static book page.

A live notebook gets tqdm's widget bar; a terminal gets the text bar. When a notebook is executed
to be rendered into a static page (``ENF_PROGRESS=static``, set by the book build), a bar that
redraws itself would leave dozens of carriage-return frames in the page, so instead it prints
its final state once, as a single clean line, when it closes.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, Iterable

from tqdm import auto, std


class StaticProgress(std.tqdm):
    """A tqdm bar that draws nothing while running and prints one final line when closed."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        if not self.disable and not getattr(self, "_printed", False):
            self._printed = True
            print(self.format_meter(**self.format_dict).strip(), file=sys.stdout, flush=True)
        super().close()


def progress(iterable: Iterable | None = None, **kwargs: Any) -> std.tqdm:
    """``tqdm(iterable, **kwargs)`` that renders cleanly everywhere (see the module docstring)."""
    mode = os.environ.get("ENF_PROGRESS", "auto")
    if mode == "static":
        return StaticProgress(iterable, **kwargs)
    if mode == "off":
        return std.tqdm(iterable, disable=True, **kwargs)
    return auto.tqdm(iterable, **kwargs)
