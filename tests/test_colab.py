"""The Colab copies: MyST turned into plain Markdown, solutions hidden (colab/) or removed
(colab/student/), and the committed copies up to date."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_colab  # noqa: E402
from set_repository_url import BADGE  # noqa: E402

SITE = make_colab.load_site()
BOOK = SITE.url
SOURCES = sorted((ROOT / "notebooks").glob("*.md"))
COPIES = sorted((ROOT / "colab").glob("**/*.ipynb"))
FRONT = """---
jupytext:
  text_representation:
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

"""

NOTEBOOK = FRONT + '''# Chapter

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

SECRET-THREE explains.

```{code-cell} ipython3
def square(x):  # SECRET-TWO
    return x * x
```

```{solution-end}
```

## After the exercises
'''


def convert(body: str, student: bool = False, front: bool = True) -> nbformat.NotebookNode:
    """``body`` converted as if it were notebooks/01_neural_fields.md."""
    return make_colab.convert((FRONT if front else "") + body, "notebooks/01_neural_fields.md",
                              SITE, student)


def text(nb: nbformat.NotebookNode) -> str:
    return "\n\n".join(c.source for c in nb.cells)


def test_exercise_becomes_a_numbered_heading_with_an_anchor():
    out = text(convert(NOTEBOOK, front=False))
    assert '### <a id="ex-double"></a>Exercise 1.1: Double it\n\nWrite `double(x)`.' in out
    assert '### <a id="ex-square"></a>Exercise 1.2: Square it' in out
    assert "{exercise}" not in out


def test_solution_directive_is_folded_into_details():
    out = text(convert(NOTEBOOK, front=False))
    assert ("<details>\n<summary>Solution to Exercise 1.1</summary>\n\n"
            "`return 2 * x` -- SECRET-ONE\n\n</details>") in out


def test_gated_solution_with_code_is_a_collapsed_section():
    nb = convert(NOTEBOOK, front=False)
    heads = [i for i, c in enumerate(nb.cells) if c.source.startswith("#### Solution")]
    assert len(heads) == 1
    head = nb.cells[heads[0]]
    assert head.source.startswith("#### Solution to Exercise 1.2")
    assert head.metadata == {"id": head.id, "jp-MarkdownHeadingCollapsed": True}
    assert nb.metadata["colab"] == {"collapsed_sections": [head.id]}
    after = [c.source for c in nb.cells[heads[0] + 1:]]
    assert after[0] == "SECRET-THREE explains." and "SECRET-TWO" in after[1]
    assert after[2] == "## After the exercises"  # a new cell, ending the section
    assert "jupytext" not in nb.metadata
    nbformat.validate(nb)


def test_gated_solution_without_code_is_folded_into_details():
    nb = convert("# T\n\n```{exercise}\n:label: ex-a\n\nDo it.\n```\n\n"
                 "```{solution-start} ex-a\n```\n\nSECRET\n\n+++\n\nMore SECRET\n\n"
                 "```{solution-end}\n```\n\nAfter.\n")
    out = text(nb)
    assert "### <a id=\"ex-a\"></a>Exercise 1.1\n" in out
    assert ("<summary>Solution to Exercise 1.1</summary>\n\nSECRET\n\nMore SECRET\n\n"
            "</details>") in out
    assert "After." in out and "colab" not in nb.metadata


def test_student_copy_has_no_solutions_and_keeps_exercises():
    nb = convert(NOTEBOOK, student=True, front=False)
    out = text(nb)
    assert "SECRET" not in out
    assert "Write `double(x)`" in out and "Write `square(x)`" in out
    assert 'print("kept")' in out and "After the exercises" in out
    link = f"[in the book]({BOOK}/notebooks/01_neural_fields.html#ex-square)"
    assert out.count("solution is [in the book]") == 2 and link in out
    assert not any(c.outputs for c in nb.cells if c.cell_type == "code")


def test_unterminated_gated_solution_is_an_error():
    broken = NOTEBOOK.replace("```{solution-end}\n```\n", "")
    with pytest.raises(make_colab.ConversionError, match="no matching"):
        convert(broken, front=False)


def test_text_hidden_by_a_collapsed_solution_is_an_error():
    broken = NOTEBOOK.replace("## After the exercises", "Plain text after the solution.")
    with pytest.raises(make_colab.ConversionError, match="heading"):
        convert(broken, front=False)


def test_cite_links_to_the_bibliography():
    out = text(convert("SIREN {cite}`sitzmann2020siren` and "
                       "({cite}`cohen2016group,finn2017maml`)."))
    ref = f"{BOOK}/book/intro.html#references"
    assert out == (f"SIREN ([Sitzmann et al. 2020]({ref})) and "
                   f"([Cohen and Welling 2016]({ref}); [Finn et al. 2017]({ref})).")


def test_doc_links_to_the_page_titled_by_its_heading():
    out = text(convert("See {doc}`02_conditioning`, {doc}`the notation <../book/notation>`."))
    title = make_colab.first_heading((ROOT / "notebooks" / "02_conditioning.md").read_text())
    assert out == (f"See [{title}]({BOOK}/notebooks/02_conditioning.html), "
                   f"[the notation]({BOOK}/book/notation.html).")


def test_ref_links_to_exercises_and_targets():
    out = text(convert("(my-target)=\n## A section\n\n{ref}`ex-01-siren`, "
                       "{ref}`that one <ex-02-sum-vs-mean>`."))
    assert out.startswith('<a id="my-target"></a>\n## A section')
    assert (f"[Exercise 1.1]({BOOK}/notebooks/01_neural_fields.html#ex-01-siren), "
            f"[that one]({BOOK}/notebooks/02_conditioning.html#ex-02-sum-vs-mean).") in out


def test_code_spans_and_code_blocks_are_left_alone():
    body = "Use `{cite}` and `f\"{name}\"`.\n\n```text\n{doc}`x` and ```{note}\n```\n"
    assert text(convert(body)) == body.strip("\n")


def test_list_table_becomes_a_pipe_table():
    out = text(convert("```{list-table} Title\n:header-rows: 1\n:widths: 20 80\n\n"
                       "* - Where\n  - How\n* - Colab\n  - Every notebook, see\n"
                       "    {doc}`00_quickstart` | here\n```\n"))
    link = f"[{SITE.titles['notebooks/00_quickstart']}]({BOOK}/notebooks/00_quickstart.html)"
    assert out == ("**Title**\n\n| Where | How |\n|---|---|\n"
                   f"| Colab | Every notebook, see {link} \\| here |")


def test_admonition_becomes_a_block_quote():
    out = text(convert("```{note}\nMind {cite}`krizhevsky2009cifar`.\n```\n"))
    assert out == (f"> **Note**\n>\n> Mind ([Krizhevsky 2009]({BOOK}/book/intro.html#references)).")


def test_colab_badge_points_at_the_copy_itself():
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/o/r/blob/main/notebooks/"
             "01_neural_fields.ipynb)")
    url, branch = SITE.repo
    prefix = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}"
    assert f"{prefix}/blob/{branch}/colab/01_neural_fields.ipynb" in text(convert(badge))
    student = text(convert(badge, student=True))
    assert f"{prefix}/blob/{branch}/colab/student/01_neural_fields.ipynb" in student


@pytest.mark.parametrize("body, message", [
    ("Intro.\n\n```{figure} x.png\n```\n", r"01_neural_fields\.md:13: unknown directive"),
    ("A\n\nB {name}`x`\n", r"01_neural_fields\.md:13: unknown role \{name\}"),
    ("```{exercise} T\n:lable: ex-x\n```\n", r"unknown options \['lable'\]"),
    ("{cite}`nobody2000`\n", "'nobody2000'"),
    ("{doc}`99_missing`\n", "'99_missing'"),
    ("{ref}`ex-missing`\n", "'ex-missing'"),
    ("```{solution} ex-missing\n```\n", "no such exercise"),
    ("> ```{note}\n> quoted\n> ```\n", "not at the start of a line"),
    (":::{note}\nopen\n", "never closed"),
])
def test_what_cannot_be_converted_is_an_error(body, message):
    with pytest.raises(make_colab.ConversionError, match=message):
        convert(body)


def test_book_url_prefers_baseurl():
    repo = {"url": "https://github.com/Some-Org/some-repo"}
    assert make_colab.book_url({"repository": repo}) == "https://some-org.github.io/some-repo"
    assert make_colab.book_url({"repository": repo, "html": {"baseurl": "https://x.org/b/"}}) == \
        "https://x.org/b"


@pytest.fixture(scope="module")
def outputs() -> dict[Path, str]:
    return make_colab.outputs(ROOT / "colab")


def test_committed_copies_are_up_to_date(outputs):
    assert len(outputs) == 2 * len(SOURCES)
    assert not make_colab.problems(ROOT / "colab", outputs), "run `make colab`"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_badge_points_at_the_colab_copy(source, outputs):
    md = source.read_text()
    folders = {m["folder"] for m in BADGE.finditer(md)
               if md.startswith(f"{source.stem}.ipynb", m.end())}
    assert "colab" in folders, (
        f"{source.name}: the Colab badge should link colab/{source.stem}.ipynb")
    copy = ROOT / "colab" / f"{source.stem}.ipynb"
    assert copy.exists() and copy.read_text(encoding="utf-8") == outputs[copy]


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(ROOT / "colab")))
def test_no_myst_is_left_in_the_copies(copy):
    nb = nbformat.read(copy, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        assert not re.search(r"```\{|:::\{", cell.source), f"{copy.name}: a MyST directive"
        assert not re.search(r"(?<![`\w])\{(cite|doc|ref|name|math)\}`", cell.source), (
            f"{copy.name}: a MyST role")
        assert not cell.get("outputs"), f"{copy.name}: outputs"


def test_student_copy_lacks_the_solutions():
    sentence = "A SIREN escapes spectral bias as well"
    assert sentence in (ROOT / "notebooks" / "01_neural_fields.md").read_text()
    colab = (ROOT / "colab" / "01_neural_fields.ipynb").read_text(encoding="utf-8")
    student = (ROOT / "colab" / "student" / "01_neural_fields.ipynb").read_text(encoding="utf-8")
    assert sentence in colab and "class Siren(" in colab
    assert sentence not in student and "class Siren(" not in student
