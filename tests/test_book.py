"""The book's sources agree with each other: notebook pairs, badges, install lines, environments."""

import re
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.md"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"]["branch"]


def cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_there_are_notebooks():
    assert SOURCES, "no notebooks/*.md found"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_pair_is_in_sync(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make sync-notebooks`"
    paired = nbformat.read(ipynb, as_version=4)
    assert cells(jupytext.read(source)) == cells(paired), (
        f"{source.name} and {ipynb.name} differ: run `make sync-notebooks`")
    assert not any(c.get("outputs") for c in paired.cells if c.cell_type == "code"), (
        f"{ipynb.name} has outputs committed")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_badge_and_install_line_follow_the_repository_setting(source):
    text = source.read_text()
    path = URL.removeprefix("https://github.com/")
    prefix = f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/colab/"
    badge, student = f"{prefix}{source.stem}.ipynb", f"{prefix}student/{source.stem}.ipynb"
    assert badge in text, f"{source.name}: Colab badge should link {badge}"
    assert student in text, f"{source.name}: the student-copy link should be {student}"
    found = re.findall(r"colab\.research\.google\.com/github/\S+?\.ipynb", text)
    assert found == [badge[8:], student[8:]], f"{source.name}: other Colab links: {found}"
    installs = re.findall(r"enf_lib @ git\+(\S+?)[\"']", text)
    assert installs == [URL], f"{source.name}: install line should use {URL}, found {installs}"
    # The theme's own Colab button would open the jupytext pair notebooks/NN.ipynb, raw MyST:
    # the badge above (the clean colab/ copy) is the only way into Colab.
    assert "colab_url" not in (CONFIG.get("launch_buttons") or {})


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_code_lines_fit_in_79_columns(source):
    """The book shows code cells 79 columns wide: longer lines would be clipped. The install
    line is exempt, its length follows the repository URL (tools/set_repository_url.py)."""
    long = [line for cell in jupytext.read(source).cells if cell.cell_type == "code"
            for line in cell.source.splitlines()
            if len(line) > 79 and "enf_lib @ git+" not in line]
    assert not long, f"{source.name}: {len(long)} code lines over 79 columns:\n" + "\n".join(long)


def test_every_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    files = re.findall(r"file:\s*(\S+)", toc) + re.findall(r"root:\s*(\S+)", toc)
    for entry in files:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry
    for source in SOURCES:
        assert f"notebooks/{source.stem}" in files, f"{source.name} is not in _toc.yml"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_installs_the_same_packages_as_pyproject():
    """Conda packages plus those under ``pip:`` (but the course itself), with the same version
    bounds wherever environment.yml gives one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r): r for r in project["dependencies"] + extras["book"] + extras["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    listed = {_name(d): d for d in [*env, *pip] if isinstance(d, str) and d != "-e ."}
    listed = {k: v for k, v in listed.items() if k not in ("python", "pip")}
    assert set(listed) == set(wanted)
    for name, spec in listed.items():
        if spec != name:
            assert spec.replace(" ", "") == wanted[name].replace(" ", ""), (spec, wanted[name])


def test_constraints_pin_every_direct_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pinned = {_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line}
    for req in project["dependencies"] + extras["book"] + extras["test"]:
        assert _name(req) in pinned, f"{req} is not pinned in constraints.txt"


def test_jax_has_no_upper_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    jax = [r for r in project["dependencies"] if _name(r) == "jax"]
    assert jax and "<" not in jax[0], "installing on Colab must never replace Colab's jax"


def test_book_builds_without_executing_the_notebooks(tmp_path):
    """The strict build minus execution (seconds): catches broken links, citations, toc entries
    and directives before the long executed build of `make book`."""
    pytest.importorskip("jupyter_book")
    import shutil
    import subprocess
    import sys

    config = dict(CONFIG, execute={**CONFIG.get("execute", {}), "execute_notebooks": "off"})
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    out = subprocess.run([exe, "build", str(ROOT), "--config", str(tmp_path / "_config.yml"),
                          "--path-output", str(tmp_path / "out"), "--warningiserror",
                          "--keep-going"], capture_output=True, text=True, timeout=600)
    warnings = [line for line in out.stdout.splitlines() + out.stderr.splitlines()
                if "WARNING" in line and "Location 'file" not in line]
    assert out.returncode == 0 and not warnings, "\n".join(warnings) or out.stdout[-3000:]
    html = tmp_path / "out" / "_build" / "html"
    _assert_mathjax_is_served_with_the_book(html)


def _assert_mathjax_is_served_with_the_book(html: Path) -> None:
    """Every page with math loads MathJax from the book's own _static folder, never from a
    CDN: the formulas render without a network."""
    pages = [page for page in html.glob("**/*.html") if "MathJax" in page.read_text()]
    assert pages, "no page loads MathJax"
    for page in pages:
        scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", page.read_text(), re.I)
        assert scripts, f"{page.name}: MathJax configured but not loaded"
        for src in scripts:
            assert not re.match(r"(https?:)?//", src), f"{page.name} loads MathJax from {src}"
            assert (page.parent / src).is_file(), f"{page.name}: {src} is missing"


def test_mathjax_is_served_with_the_book():
    """The extension that copies MathJax into the book is configured (the built pages are
    checked in the non-executed build above)."""
    assert "sphinx-mathjax-offline" in CONFIG["sphinx"]["extra_extensions"]
    assert "mathjax_path" not in CONFIG["sphinx"].get("config", {}), "it would override it"
