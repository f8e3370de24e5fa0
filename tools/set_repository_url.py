"""Point every notebook's Colab badge and install line at the repository named in _config.yml.

Usage: python tools/set_repository_url.py [NEW_URL]
With NEW_URL, _config.yml's repository.url is changed first. The .ipynb twins are then rewritten
from their MyST sources with jupytext.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A Colab link's prefix, up to the notebook's name; FOLDER: notebooks, colab or colab/student.
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+?/blob/[^/)\s]+/"
                   r"(?P<folder>notebooks|colab/student|colab)/")
INSTALL = re.compile(r"enf_lib @ git\+https://github\.com/[^\"'\s]+")


def repository() -> tuple[str, str]:
    """``(url, branch)`` from ``_config.yml``."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_prefix(url: str, branch: str, folder: str = "notebooks") -> str:
    """``https://colab.research.google.com/github/ORG/REPO/blob/BRANCH/FOLDER/``."""
    path = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/{folder}/"


def main(argv: list[str]) -> None:
    config = ROOT / "_config.yml"
    if argv:
        new = argv[0].rstrip("/")
        if not new.startswith("https://github.com/"):
            sys.exit("the repository URL must start with https://github.com/")
        text, n = re.subn(r"(repository:\n  url: )\S+", rf"\g<1>{new}", config.read_text())
        if n != 1:
            sys.exit("could not find repository.url in _config.yml")
        config.write_text(text)
    url, branch = repository()
    sources = sorted((ROOT / "notebooks").glob("*.md"))
    for md in sources:
        text = BADGE.sub(lambda m: colab_prefix(url, branch, m["folder"]), md.read_text())
        md.write_text(INSTALL.sub(f"enf_lib @ git+{url}", text))
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", *map(str, sources)], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
