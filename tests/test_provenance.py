"""Code versions and committed files, from a checkout and from plain (non-editable) installs."""

import json
import subprocess
import urllib.error
import urllib.parse
from importlib import metadata
from pathlib import Path

import pytest

import enf_lib
from enf_lib import provenance
from enf_lib.provenance import code_version, committed_file, installed_commit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESULT = "benchmarks/results/meta_step-cpu.json"


class FakeDistribution:
    """What ``importlib.metadata.distribution("enf_lib")`` gives for one kind of install."""

    def __init__(self, version: str, direct_url: dict | None = None):
        self.version, self._direct_url = version, direct_url

    def read_text(self, name: str) -> str | None:
        if name == "direct_url.json" and self._direct_url is not None:
            return json.dumps(self._direct_url)
        return None


GIT_INSTALL = FakeDistribution("0.1.dev5+g0123456", {
    "url": "https://github.com/equivariant-neural-fields/enf-course.git",
    "vcs_info": {"vcs": "git", "commit_id": COMMIT}})
CHECKOUT_INSTALL = FakeDistribution("0.1.dev5+g0123456", {"url": "file:///src/enf-course",
                                                          "dir_info": {}})


def make_clone(root: Path) -> Path:
    """A folder that looks like a clone of the course, with one committed result."""
    (root / ".git").mkdir(parents=True)
    (root / "enf_lib").mkdir()
    (root / RESULT).parent.mkdir(parents=True)
    (root / RESULT).write_text('{"rows": []}')
    return root


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """Run as a plain install: the package in a site-packages outside any checkout, the working
    directory outside any clone, the cache in ``tmp_path``; returns a setter for the install."""
    monkeypatch.setattr(provenance, "_PACKAGE_ROOT", tmp_path / "venv" / "site-packages")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("ENF_CACHE_DIR", str(tmp_path / "cache"))

    def install(dist: FakeDistribution) -> None:
        monkeypatch.setattr(provenance.metadata, "distribution", lambda name: dist)
    return install


@pytest.fixture
def downloads(monkeypatch):
    """Record the URLs fetched, answering each with a small JSON body (no network)."""
    urls: list[str] = []

    def fake_download(url: str, dest: Path, **kwargs) -> Path:
        urls.append(url)
        dest.write_text('{"rows": ["from github"]}')
        return dest
    monkeypatch.setattr(provenance, "download_file", fake_download)
    return urls


def test_the_tests_import_the_installed_enf_lib():
    """The source tree of an editable install, else the installed copy (the plain-install CI
    job runs these tests from the checkout: they must not pick up its enf_lib/)."""
    dist = metadata.distribution("enf_lib")
    record = json.loads(dist.read_text("direct_url.json") or "{}")
    if record.get("dir_info", {}).get("editable"):
        source = Path(urllib.parse.unquote(urllib.parse.urlparse(record["url"]).path))
        expected = source / "enf_lib" / "__init__.py"
    else:
        expected = Path(dist.locate_file("enf_lib/__init__.py"))
    assert Path(enf_lib.__file__).resolve() == expected.resolve()


def test_committed_file_from_the_checkout_the_package_runs_from(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "_PACKAGE_ROOT", make_clone(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    assert committed_file(RESULT) == tmp_path / "repo" / RESULT


def test_committed_file_from_a_clone_holding_the_working_directory(installed, downloads,
                                                                    monkeypatch, tmp_path):
    installed(CHECKOUT_INSTALL)
    clone = make_clone(tmp_path / "clone")
    (clone / "notebooks").mkdir()
    monkeypatch.chdir(clone / "notebooks")
    assert committed_file(RESULT) == clone / RESULT
    assert downloads == []


def test_committed_file_is_fetched_once_at_the_installed_commit(installed, downloads, tmp_path):
    installed(GIT_INSTALL)
    path = committed_file(RESULT)
    assert path == tmp_path / "cache" / "committed" / COMMIT / RESULT
    assert json.loads(path.read_text()) == {"rows": ["from github"]}
    assert committed_file(RESULT) == path
    assert downloads == ["https://raw.githubusercontent.com/equivariant-neural-fields/"
                         f"enf-course/{COMMIT}/{RESULT}"]


@pytest.mark.parametrize("error", [urllib.error.URLError("offline"), TimeoutError()])
def test_committed_file_is_none_when_the_fetch_fails(installed, monkeypatch, error):
    installed(GIT_INSTALL)

    def failing_download(url: str, dest: Path, **kwargs) -> Path:
        raise error
    monkeypatch.setattr(provenance, "download_file", failing_download)
    assert committed_file(RESULT) is None


def test_committed_file_is_none_without_checkout_or_git_install(installed, downloads):
    installed(CHECKOUT_INSTALL)
    assert committed_file(RESULT) is None
    assert downloads == []


@pytest.mark.parametrize("dist, expected", [
    (GIT_INSTALL, COMMIT),
    (CHECKOUT_INSTALL, "0123456"),
    (FakeDistribution("0.1.dev5+g0123456.d20250101", {"url": "file:///src", "dir_info": {}}),
     "0123456+dirty"),
    (FakeDistribution("0.1.0"), "enf_lib 0.1.0"),
])
def test_code_version_of_a_plain_install_is_its_commit(installed, dist, expected):
    installed(dist)
    assert code_version() == expected
    assert installed_commit() == (None if expected.startswith("enf_lib") else expected)


def test_code_version_of_a_venv_inside_a_checkout_is_the_installed_commit(installed,
                                                                           monkeypatch,
                                                                           tmp_path):
    """``git describe`` must not report the checkout that happens to hold the venv."""
    clone = make_clone(tmp_path / "clone")
    monkeypatch.setattr(provenance, "_PACKAGE_ROOT", clone / ".venv" / "lib" / "site-packages")
    installed(GIT_INSTALL)
    assert code_version() == COMMIT


def test_code_version_of_a_checkout_is_git_describe(monkeypatch, tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-qm", "a")
    monkeypatch.setattr(provenance, "_PACKAGE_ROOT", tmp_path)
    assert code_version() == git("rev-parse", "--short", "HEAD")
    (tmp_path / "a.txt").write_text("b")
    assert code_version() == git("rev-parse", "--short", "HEAD") + "+dirty"
