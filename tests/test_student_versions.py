"""The student-version tool removes solutions and keeps exercises."""

import importlib.util
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("students", ROOT / "tools" / "make_student_versions.py")
students = importlib.util.module_from_spec(spec)
spec.loader.exec_module(students)

NOTEBOOK = '''---
jupytext:
  text_representation:
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Chapter

```{exercise} Double it
:label: ex-double

Write `double(x)`.
```

```{solution} ex-double
:class: dropdown

`return 2 * x` -- SECRET-ONE
```

```{code-cell} ipython3
print("kept")
```

```{exercise} Square it
:label: ex-square

Write `square(x)`.
```

```{solution-start} ex-square
:class: dropdown
```

```{code-cell} ipython3
def square(x):  # SECRET-TWO
    return x * x
```

```{solution-end}
```

After the exercises.
'''


def test_solutions_are_removed_and_exercises_kept():
    nb = students.strip_solutions(jupytext.reads(NOTEBOOK, fmt="md:myst"))
    text = "\n".join(c.source for c in nb.cells)
    assert "SECRET" not in text
    assert "Write `double(x)`" in text and "Write `square(x)`" in text
    assert 'print("kept")' in text and "After the exercises." in text
    assert text.count("solution is in the book") == 2


def test_unterminated_gated_solution_is_an_error():
    broken = NOTEBOOK.replace("```{solution-end}\n```\n", "")
    with pytest.raises(ValueError, match="no matching"):
        students.strip_solutions(jupytext.reads(broken, fmt="md:myst"))


def test_every_course_notebook_converts(tmp_path):
    students.main([str(tmp_path)])
    made = sorted(p.stem for p in tmp_path.glob("*.ipynb"))
    assert made == sorted(p.stem for p in (ROOT / "notebooks").glob("*.md"))
