"""Write student versions of the notebooks: every exercise kept, every solution removed.

Usage: python tools/make_student_versions.py [OUT_DIR]   (default: student/)

Solutions are written with sphinx-exercise, either as one directive
(```{solution} label ... ```) or gated, spanning code cells
(```{solution-start} label``` ... ```{solution-end}```). Both are removed; in their place the
student version says where the solution was. The output notebooks have no outputs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
FENCE = r"(`{3,}|:{3,})"
SOLUTION = re.compile(FENCE + r"\{solution\}[^\n]*\n.*?^\1[ \t]*$\n?", re.S | re.M)
START = re.compile(FENCE + r"\{solution-start\}[^\n]*\n.*?^\1[ \t]*$\n?", re.S | re.M)
END = re.compile(FENCE + r"\{solution-end\}[^\n]*\n?.*?^\1[ \t]*$\n?", re.S | re.M)
PLACEHOLDER = "*(The solution is in the book.)*\n"


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without solutions (see the module docstring)."""
    cells, inside = [], False
    for cell in nb.cells:
        text = cell.source
        if inside:
            if cell.cell_type != "markdown" or not END.search(text):
                continue
            text, inside = PLACEHOLDER + text[END.search(text).end():], False
        if cell.cell_type == "markdown":
            text = SOLUTION.sub(PLACEHOLDER, text)
            start = START.search(text)
            if start:
                end = END.search(text, start.end())
                if end:  # gated solution within one cell
                    text = text[:start.start()] + PLACEHOLDER + text[end.end():]
                else:
                    text, inside = text[:start.start()], True
            if not text.strip():
                continue
        new = nbformat.from_dict(dict(cell))
        new.source = text
        if new.cell_type == "code":
            new.outputs, new.execution_count = [], None
        cells.append(new)
    if inside:
        raise ValueError("a {solution-start} has no matching {solution-end}")
    out = nbformat.from_dict(dict(nb))
    out.cells = cells
    return out


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else ROOT / "student"
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted((ROOT / "notebooks").glob("*.md")):
        student = strip_solutions(jupytext.read(source))
        target = out_dir / f"{source.stem}.ipynb"
        nbformat.write(student, target)
        print(f"{source.name} -> {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
