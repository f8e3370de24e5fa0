"""Write the Colab copies of the chapters: plain Markdown instead of MyST, solutions hidden.

Usage: python tools/make_colab.py [--out colab] [--check]

For every notebooks/NN_name.md (read with jupytext) it writes two notebooks without outputs:

- OUT/NN_name.ipynb. Every MyST directive and role becomes Markdown that Colab renders. An
  exercise becomes the heading "### Exercise N.M: Title" (N: the chapter's number, M: its place
  in the chapter), with its label as an HTML anchor. A solution that is only Markdown (a
  {solution} directive, or a gated solution without code cells) is folded into a
  <details><summary>Solution to Exercise N.M</summary> block. A gated solution with code cells
  ({solution-start} ... {solution-end}) becomes a section under the heading
  "#### Solution to Exercise N.M", stored collapsed (Colab's `collapsed_sections`, JupyterLab's
  `jp-MarkdownHeadingCollapsed`): its cells stay hidden until the reader opens the section.
  What follows such a solution must therefore start with a heading of level 1 to 4 (the next
  exercise, the summary), which ends the section; anything else is an error.
- OUT/student/NN_name.ipynb: the same, with every solution replaced by a link to it in the book.

Links go to the online book, BOOK_URL (see `book_url`): {cite}`a,b` becomes
"([Author et al. 2020](BOOK_URL/PAGE.html#references); ...)", PAGE being the page with the
{bibliography} directive; {doc} a link to the page, titled by its first heading; {ref} a link to
the page and anchor of the label, titled "Exercise N.M" or by the heading after a (label)=
target (an explicit `text <target>` wins). (label)= targets become HTML anchors, {list-table}
a pipe table, admonitions a block quote with a bold title; {bibliography} is dropped. Colab
links to a chapter's notebook (the badge) point at the copy itself: OUT/ or OUT/student/.
An unknown directive, option or role, or a label, key or page that does not exist, is an error
naming the file and line. The output is deterministic: nbformat 4, no jupytext metadata, cell
ids from the cells' text.

With --check nothing is written: it lists the files under OUT that are missing, stale or have
no source, and exits with status 1 if there are any.
"""

from __future__ import annotations

import argparse
import hashlib
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
import yaml

from set_repository_url import BADGE, colab_prefix, repository

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("notebooks", "book")  # folders whose pages {doc} and {ref} can link to
COLAB = "colab"  # the copies' folder in the repository, for the Colab links

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*)$")
DIRECTIVE = re.compile(r"^\{(?P<name>[^}\s]+)\}[ \t]*(?P<arg>.*?)[ \t]*$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*?)[ \t]*$")
INLINE = re.compile(r"\{(?P<role>[a-z][\w:+-]*)\}(?P<ticks>`+)(?P<body>.+?)(?P=ticks)"
                    r"|(?P<code>`+).+?(?P=code)", re.S)
EXPLICIT = re.compile(r"^(?P<text>.+?)\s*<(?P<target>[^<>]+)>$", re.S)
TARGET = re.compile(r"^\((?P<label>[^()\s]+)\)=[ \t]*$", re.M)
TARGET_HEADING = re.compile(r"^\((?P<label>[^()\s]+)\)=[ \t]*\n(?:[ \t]*\n)*"
                            r"(?:#{1,6}[ \t]+(?P<title>.+?)[ \t]*$)?", re.M)
EXERCISE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{exercise\}.*\n(?P<options>(?:[ \t]*:[\w-]+:.*\n)*)",
                      re.M)
LABEL = re.compile(r"^[ \t]*:label:[ \t]*(?P<label>\S+)", re.M)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t#]*$", re.M)
LEFTOVER = re.compile(r"(?:`{3,}|:{3,})\{")
ADMONITIONS = {"admonition", "attention", "caution", "danger", "error", "hint", "important",
               "note", "seealso", "tip", "warning"}
OPTIONS = {
    "exercise": {"label", "class"},
    "solution": {"label", "class"},
    "solution-start": {"label", "class"},
    "solution-end": set(),
    "list-table": {"header-rows", "widths", "width", "align", "class", "name"},
    "bibliography": {"filter", "style", "all"},
    **{name: {"class", "name"} for name in ADMONITIONS},
}


class ConversionError(ValueError):
    """MyST that this tool cannot turn into plain Markdown."""


@dataclass(frozen=True)
class Where:
    """A place in a source file, for error messages."""

    file: str
    line: int

    def at(self, offset: int) -> Where:
        """The place ``offset`` lines further down."""
        return Where(self.file, self.line + offset)

    def error(self, message: str) -> ConversionError:
        """An error about this place."""
        return ConversionError(f"{self.file}:{self.line}: {message}")


@dataclass(frozen=True)
class Directive:
    """A parsed MyST directive."""

    name: str
    arg: str
    options: dict[str, str]
    body: str
    indent: str
    where: Where  # of the opening fence
    body_where: Where


@dataclass(frozen=True)
class Site:
    """What the links need to know about the online book."""

    url: str
    repo: tuple[str, str]  # (repository URL, branch), for the Colab links
    titles: dict[str, str]  # page ("notebooks/01_neural_fields") -> its first heading
    labels: dict[str, tuple[str, str | None]]  # label -> (link, default text)
    cites: dict[str, str]  # bibtex key -> "Sitzmann et al. 2020"
    bibliography: str  # link to the references


@dataclass
class Chapter:
    """The state of one conversion."""

    site: Site
    page: str  # "notebooks/01_neural_fields"
    student: bool
    count: int = 0  # exercises so far
    exercises: dict[str, str] = field(default_factory=dict)  # label -> "Exercise 1.2"


# --- the online book -------------------------------------------------------------------------

def book_url(config: dict) -> str:
    """The online book: ``html.baseurl``, else the GitHub Pages address of ``repository.url``."""
    base = (config.get("html") or {}).get("baseurl")
    if base:
        return base.rstrip("/")
    path = config["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
    org, repo = path.split("/")
    return f"https://{org.lower()}.github.io/{repo}"


def anchor(text: str) -> str:
    """The HTML id Sphinx gives a section or target called ``text``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def exercise_name(page: str, n: int) -> str:
    """``Exercise N.n`` for a page ``NN_name`` (N = int(NN)), else ``Exercise n``."""
    chapter = re.match(r"\d+", posixpath.basename(page))
    return f"Exercise {int(chapter[0])}.{n}" if chapter else f"Exercise {n}"


def surname(name: str) -> str:
    """The last name in a BibTeX name ("Last, First" or "First Last"), LaTeX markup removed."""
    name = re.sub(r"\\[a-zA-Z]+\s*|\\.|[{}]", "", name).strip()
    return name.split(",")[0].strip() if "," in name else name.split()[-1]


def cite_text(authors: str, year: str) -> str:
    """"Cohen and Welling 2016", "Sitzmann et al. 2020"."""
    names = [surname(a) for a in re.split(r"\s+and\s+", authors.strip())]
    lead = " and ".join(names) if len(names) <= 2 else f"{names[0]} et al."
    return f"{lead} {year}"


def read_bib(text: str) -> dict[str, str]:
    """``{key: cite_text}`` for every entry of a BibTeX file with an author and a year."""
    cites = {}
    for entry in re.finditer(r"^@\w+\{(?P<key>[^,\s]+),(?P<body>.*?)^\}", text, re.M | re.S):
        author = re.search(r"^[ \t]*author[ \t]*=[ \t]*\{(?P<v>.*)\},?[ \t]*$", entry["body"], re.M)
        year = re.search(r"^[ \t]*year[ \t]*=[ \t]*\{?(?P<v>\d{4})", entry["body"], re.M)
        if author and year:
            cites[entry["key"]] = cite_text(author["v"], year["v"])
    return cites


def first_heading(text: str) -> str | None:
    """The first ``# `` heading of a page, after its front matter."""
    if text.startswith("---\n"):
        text = text[text.find("\n---", 4) + 4:]
    title = re.search(r"^# +(?P<title>.+?)[ \t]*$", text, re.M)
    return title["title"] if title else None


def page_labels(page: str, text: str, url: str) -> dict[str, tuple[str, str | None]]:
    """The exercise labels and (label)= targets of a page, with their links and texts."""
    labels = {}
    for n, exercise in enumerate(EXERCISE.finditer(text), 1):
        label = LABEL.search(exercise["options"])
        if label:
            labels[label["label"]] = (f"{url}/{page}.html#{label['label']}", exercise_name(page, n))
    for target in TARGET_HEADING.finditer(text):
        labels[target["label"]] = (f"{url}/{page}.html#{anchor(target['label'])}", target["title"])
    return labels


def bibliography_link(pages: dict[str, str], url: str) -> str:
    """The link to the section of the page holding the {bibliography} directive."""
    for page, text in pages.items():
        directive = re.search(r"^[ \t]*(?:`{3,}|:{3,})\{bibliography\}", text, re.M)
        if directive:
            headings = HEADING.findall(text, 0, directive.start())
            return f"{url}/{page}.html" + (f"#{anchor(headings[-1])}" if headings else "")
    raise ConversionError("no page has a {bibliography} directive")


def load_site(root: Path = ROOT) -> Site:
    """Everything the links need, read from ``_config.yml``, the pages and the bibliography."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    url = book_url(config)
    pages = {f"{folder}/{p.stem}": p.read_text()
             for folder in PAGES for p in sorted((root / folder).glob("*.md"))}
    labels = {}
    for page, text in pages.items():
        labels.update(page_labels(page, text, url))
    cites = {}
    for bib in config.get("bibtex_bibfiles", []):
        cites.update(read_bib((root / bib).read_text()))
    titles = {page: title for page, text in pages.items() if (title := first_heading(text))}
    return Site(url, repository(), titles, labels, cites, bibliography_link(pages, url))


# --- parsing ---------------------------------------------------------------------------------

def parse_directive(match: re.Match, lines: list[str], indent: str, where: Where) -> Directive:
    """A directive from its ``{name} arg`` match and the lines between its fences."""
    lines = [line.removeprefix(indent) for line in lines]
    options, i = {}, 0
    while i < len(lines) and (option := OPTION.match(lines[i])):
        options[option["key"]] = option["value"]
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    name = match["name"]
    if name not in OPTIONS:
        raise where.error(f"unknown directive {{{name}}}")
    unknown = sorted(set(options) - OPTIONS[name])
    if unknown:
        raise where.error(f"{{{name}}} has unknown options {unknown}")
    return Directive(name, match["arg"], options, "\n".join(lines[i:]).rstrip(), indent, where,
                     where.at(1 + i))


def blocks(text: str, where: Where) -> list[tuple[str, str | Directive, Where]]:
    """``text`` cut into ("text", markdown), ("code", fenced code) and ("directive", ...)."""
    lines, out, plain, start, i = text.split("\n"), [], [], 0, 0

    def flush(kind: str = "text") -> None:
        if plain:
            out.append((kind, "\n".join(plain), where.at(start)))
            plain.clear()

    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if not plain:
                start = i
            plain.append(lines[i])
            i += 1
            continue
        char, length = fence["fence"][0], len(fence["fence"])
        close = re.compile(rf"^[ \t]*{re.escape(char)}{{{length},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        directive = DIRECTIVE.match(fence["info"].strip())
        flush()
        if directive is None:
            if char == ":":
                raise where.at(i).error("a colon fence without a {directive}")
            end = len(lines) - 1 if end is None else end  # an open code block runs to the end
            start, plain[:] = i, lines[i:end + 1]
            flush("code")
        elif end is None:
            raise where.at(i).error(f"{{{directive['name']}}} is never closed")
        else:
            out.append(("directive", parse_directive(directive, lines[i + 1:end], fence["indent"],
                                                     where.at(i)), where.at(i)))
        i = end + 1
    flush()
    return out


# --- conversion of Markdown ------------------------------------------------------------------

def explicit(body: str) -> tuple[str | None, str]:
    """``(text, target)`` of a role's ``text <target>`` or ``target``."""
    match = EXPLICIT.match(body.strip())
    return (match["text"], match["target"].strip()) if match else (None, body.strip())


def cite(body: str, ch: Chapter, where: Where) -> str:
    """{cite}`a,b` -> links to the bibliography, "Author Year" each."""
    links = []
    for key in (k.strip() for k in body.split(",")):
        if key not in ch.site.cites:
            raise where.error(f"{{cite}} of {key!r}: no such entry with an author and a year")
        links.append(f"[{ch.site.cites[key]}]({ch.site.bibliography})")
    return "; ".join(links)


def doc(body: str, ch: Chapter, where: Where) -> str:
    """{doc}`page` or {doc}`text <page>` -> a link to the page in the online book."""
    text, target = explicit(body)
    target = re.sub(r"\.(md|ipynb)$", "", target)
    page = (target.lstrip("/") if target.startswith("/")
            else posixpath.normpath(posixpath.join(posixpath.dirname(ch.page), target)))
    if page not in ch.site.titles:
        raise where.error(f"{{doc}} of {target!r}: no such page with a title")
    return f"[{text or ch.site.titles[page]}]({ch.site.url}/{page}.html)"


def ref(body: str, ch: Chapter, where: Where) -> str:
    """{ref}`label` or {ref}`text <label>` -> a link to the label in the online book."""
    text, label = explicit(body)
    if label not in ch.site.labels:
        raise where.error(f"{{ref}} of {label!r}: no such exercise label or (label)= target")
    link, default = ch.site.labels[label]
    if not (text or default):
        raise where.error(f"{{ref}} of {label!r} needs a text: no heading follows the target")
    return f"[{text or default}]({link})"


def inline(text: str, ch: Chapter, where: Where) -> str:
    """``text`` with its roles converted (code spans left alone)."""

    def role(match: re.Match) -> str:
        if match["code"]:
            return match[0]
        here = where.at(text.count("\n", 0, match.start()))
        if match["role"] not in ROLES:
            raise here.error(f"unknown role {{{match['role']}}}")
        out = ROLES[match["role"]](match["body"], ch, here)
        inside = text[match.start() - 1:match.start()] == "(" and text[match.end():][:1] == ")"
        return f"({out})" if match["role"].startswith("cite") and not inside else out

    return INLINE.sub(role, text)


# Role -> converter; a citation is also put in parentheses, unless it already is.
ROLES = {"cite": cite, "cite:p": cite, "doc": doc, "ref": ref,
         "math": lambda body, ch, where: f"${body}$"}


def plain_text(text: str, ch: Chapter, where: Where) -> str:
    """A stretch of Markdown outside directives and code blocks, converted."""
    text = TARGET.sub(lambda m: f'<a id="{anchor(m["label"])}"></a>', inline(text, ch, where))
    folder = f"{COLAB}/student" if ch.student else COLAB
    text = BADGE.sub(lambda m: m[0] if m["folder"] == f"{COLAB}/student"
                     else colab_prefix(*ch.site.repo, folder), text)
    leftover = LEFTOVER.search(text)
    if leftover:
        raise where.at(text.count("\n", 0, leftover.start())).error(
            "a directive that is not at the start of a line")
    return text


def markdown(text: str, ch: Chapter, where: Where) -> str:
    """Markdown ``text`` with its directives and roles converted."""
    parts = []
    for kind, block, here in blocks(text, where):
        if kind == "directive":
            if block.name.startswith("solution-"):
                raise here.error(f"{{{block.name}}} inside another directive")
            block = directive(block, ch)
        parts.append(plain_text(block, ch, here) if kind == "text" else block)
    return "\n\n".join(p.strip("\n") for p in parts if p.strip())


def directive(d: Directive, ch: Chapter) -> str:
    """The Markdown for directive ``d``, indented like it."""
    text = CONVERTERS[d.name if d.name not in ADMONITIONS else "admonition"](d, ch)
    return "\n".join(d.indent + line if line else line for line in text.split("\n"))


def exercise(d: Directive, ch: Chapter) -> str:
    """{exercise} -> a heading "### Exercise N.M: Title" with the label as an anchor."""
    ch.count += 1
    name, label = exercise_name(ch.page, ch.count), d.options.get("label")
    if label:
        ch.exercises[label] = name
    anchor_tag = f'<a id="{label}"></a>' if label else ""
    title = f": {inline(d.arg, ch, d.where)}" if d.arg else ""
    return f"### {anchor_tag}{name}{title}\n\n{markdown(d.body, ch, d.body_where)}"


def exercise_of(d: Directive, ch: Chapter) -> str:
    """"Exercise N.M", the exercise that solution ``d`` solves."""
    if d.arg not in ch.exercises:
        raise d.where.error(f"{{{d.name}}} of {d.arg!r}: no such exercise earlier in the chapter")
    return ch.exercises[d.arg]


def placeholder(d: Directive, ch: Chapter) -> str:
    """What the student copy says instead of the solution to ``d``."""
    exercise_of(d, ch)
    return f"*(The solution is [in the book]({ch.site.url}/{ch.page}.html#{d.arg}).)*"


def details(d: Directive, body: str, ch: Chapter) -> str:
    """``body`` folded under "Solution to Exercise N.M"."""
    return (f"<details>\n<summary>Solution to {exercise_of(d, ch)}</summary>\n\n{body}\n\n"
            "</details>")


def solution(d: Directive, ch: Chapter) -> str:
    """{solution} -> a <details> block, or the placeholder in the student copy."""
    if ch.student:
        return placeholder(d, ch)
    return details(d, markdown(d.body, ch, d.body_where), ch)


def list_table(d: Directive, ch: Chapter) -> str:
    """{list-table} -> a pipe table (the first header row is the header)."""
    rows: list[list[str]] = []
    for offset, line in enumerate(d.body.split("\n")):
        if re.match(r"^[*+-]([ \t]|$)", line):
            rows.append([])
            line = "  " + line[1:].lstrip() if line[1:].strip() else ""
        cell = re.match(r"^[ \t]{1,3}[*+-][ \t]+(?P<text>.*)$", line)
        if cell and rows:
            rows[-1].append(cell["text"])
        elif line.strip() and rows and rows[-1]:
            rows[-1][-1] += " " + line.strip()
        elif line.strip():
            raise d.body_where.at(offset).error("a {list-table} row must be a two-level list")
    if not rows or len({len(r) for r in rows}) != 1:
        raise d.where.error("a {list-table} needs rows with the same number of cells")
    cells = [[inline(c, ch, d.body_where).replace("|", "\\|") for c in row] for row in rows]
    if int(d.options.get("header-rows", 0)) == 0:
        cells.insert(0, [""] * len(cells[0]))
    lines = [f"| {' | '.join(row)} |" for row in cells]
    lines.insert(1, "|" + "---|" * len(cells[0]))
    title = f"**{inline(d.arg, ch, d.where)}**\n\n" if d.arg else ""
    return title + "\n".join(lines)


def admonition(d: Directive, ch: Chapter) -> str:
    """{note} and the other admonitions -> a block quote with a bold title."""
    if d.name == "admonition" and not d.arg:
        raise d.where.error("an {admonition} needs a title")
    title = inline(d.arg, ch, d.where) if d.name == "admonition" else (
        "See also" if d.name == "seealso" else d.name.capitalize())
    body = markdown(d.body, ch, d.body_where)
    return "\n".join(f"> {line}".rstrip() for line in f"**{title}**\n\n{body}".split("\n"))


CONVERTERS = {
    "exercise": exercise,
    "solution": solution,
    "list-table": list_table,
    "admonition": admonition,
    "bibliography": lambda d, ch: "",
}


# --- conversion of notebooks -----------------------------------------------------------------

def cell_lines(text: str, cells: list) -> list[int]:
    """The line of ``text`` where each cell's source starts (1-based)."""
    lines, pos = [], 0
    for cell in cells:
        found = text.find(cell.source, pos)
        pos = found if found >= 0 else pos
        lines.append(text.count("\n", 0, pos) + 1)
        pos += len(cell.source) if found >= 0 else 0
    return lines


def items(nb: nbformat.NotebookNode, text: str, file: str) -> list[tuple]:
    """The notebook as ``(kind, group, payload, where)``: code cells and Markdown blocks.

    ``group`` is the index of the cell a block comes from.
    """
    out = []
    for group, (cell, line) in enumerate(zip(nb.cells, cell_lines(text, nb.cells))):
        if cell.cell_type == "markdown":
            out += [(kind, group, block, where)
                    for kind, block, where in blocks(cell.source, Where(file, line))]
        else:
            out.append(("cell", group, cell, Where(file, line)))
    return out


def is_gate(item: tuple, name: str) -> bool:
    """Whether ``item`` is the directive {solution-start} or {solution-end} (``name``)."""
    return item[0] == "directive" and item[2].name == f"solution-{name}"


def gated(start: Directive, inner: list[tuple], ch: Chapter) -> list[tuple]:
    """The output for a gated solution: its ``start`` directive, then the items ``inner``."""
    if ch.student:
        return [("md", start.where, placeholder(start, ch))]
    converted = [convert_item(item, ch) for item in inner]
    if not any(kind == "cell" for kind, _, _ in converted):
        body = "\n\n".join(text.strip("\n") for _, _, text in converted if text.strip())
        return [("md", start.where, details(start, body, ch))]
    heading = (f"#### Solution to {exercise_of(start, ch)}\n\n"
               "Try the exercise first: this section starts collapsed.")
    return [("solution", start.where, (start.arg, heading)), *converted]


def convert_item(item: tuple, ch: Chapter) -> tuple:
    """The output ``(kind, where, payload)`` for one item that is not a gate."""
    kind, _, payload, where = item
    if kind == "cell":
        return "cell", where, payload
    if kind == "directive":
        return "md", where, directive(payload, ch)
    return "md", where, plain_text(payload, ch, where) if kind == "text" else payload


def walk(stream: list[tuple], ch: Chapter) -> list[tuple]:
    """The output ``(group, kind, where, payload)`` of a notebook's items, gates resolved."""
    out, i = [], 0
    while i < len(stream):
        item = stream[i]
        if is_gate(item, "end"):
            raise item[3].error("a {solution-end} without a {solution-start}")
        if not is_gate(item, "start"):
            out.append((item[1], *convert_item(item, ch)))
            i += 1
            continue
        end = next((j for j in range(i + 1, len(stream))
                    if is_gate(stream[j], "start") or is_gate(stream[j], "end")), None)
        if end is None or not is_gate(stream[end], "end"):
            raise item[3].error("a {solution-start} has no matching {solution-end}")
        parts = gated(item[2], stream[i + 1:end], ch)
        groups = [item[1]] + [g for _, g, _, _ in stream[i + 1:end]]
        if parts[0][0] == "solution":  # a section: nothing after it may join its cells
            out += [(("in", g), *p) for g, p in zip(groups, parts)]
            out.append((None, "end", stream[end][3], None))
        else:
            out.append((item[1], *parts[0]))
        i = end + 1
    return out


def cell_id(source: str, taken: set[str]) -> str:
    """A cell id made from the cell's text, unique among ``taken`` (which it joins)."""
    base = hashlib.sha1(source.encode()).hexdigest()[:8]
    new, n = base, 1
    while new in taken:
        n += 1
        new = f"{base}-{n}"
    taken.add(new)
    return new


def assemble(out: list[tuple]) -> tuple[list, list[str]]:
    """Notebook cells from ``walk``'s output (Markdown of one source cell joined), and the ids of
    the collapsed solution headings."""
    cells, collapsed, taken, last, check = [], [], set(), None, None
    for group, kind, where, payload in out:
        if kind == "end":
            check, last = where, None
            continue
        if kind == "md" and not payload.strip():
            continue
        if check and (kind != "md" or not re.match(r"#{1,4}[ \t]", payload.lstrip())):
            raise check.error("after a solution with code cells, the Markdown must start with a "
                              "heading of level 1-4 (it ends the collapsed section)")
        check = None
        if kind == "md" and group == last and cells[-1].cell_type == "markdown":
            cells[-1].source += "\n\n" + payload.strip("\n")
        elif kind == "md":
            cells.append(nbformat.v4.new_markdown_cell(payload.strip("\n")))
        elif kind == "cell":
            cells.append(nbformat.v4.new_code_cell(payload.source, metadata=dict(payload.metadata)))
        else:
            label, heading = payload
            cell_name = "solution-" + re.sub(r"[^\w-]", "-", label)
            cells.append(nbformat.v4.new_markdown_cell(heading, id=cell_name))
            cells[-1].metadata = {"id": cells[-1].id, "jp-MarkdownHeadingCollapsed": True}
            collapsed.append(cells[-1].id)
        last = group if kind == "md" else None
    taken.update(collapsed)
    for cell in cells:
        cell.id = cell.id if cell.id in collapsed else cell_id(cell.source, taken)
    return cells, collapsed


def convert(text: str, file: str, site: Site, student: bool) -> nbformat.NotebookNode:
    """The Colab notebook (with ``student``, the student copy) of the MyST notebook ``text``,
    read from ``file`` (e.g. "notebooks/01_neural_fields.md")."""
    nb = jupytext.reads(text, fmt="md:myst")
    ch = Chapter(site, file.removesuffix(".md"), student)
    cells, collapsed = assemble(walk(items(nb, text, file), ch))
    metadata = {k: v for k, v in nb.metadata.items() if k != "jupytext"}
    if collapsed:
        metadata["colab"] = {"collapsed_sections": collapsed}
    return nbformat.v4.new_notebook(cells=cells, metadata=metadata)


# --- files -----------------------------------------------------------------------------------

def outputs(out: Path, root: Path = ROOT) -> dict[Path, str]:
    """``{path: notebook text}`` of every copy under ``out``."""
    site, files = load_site(root), {}
    for source in sorted((root / "notebooks").glob("*.md")):
        text = source.read_text()
        for folder, student in ((out, False), (out / "student", True)):
            nb = convert(text, f"notebooks/{source.name}", site, student)
            files[folder / f"{source.stem}.ipynb"] = nbformat.writes(nb) + "\n"
    return files


def orphans(out: Path, files: dict[Path, str]) -> list[Path]:
    """The notebooks under ``out`` that have no source any more."""
    existing = [*out.glob("*.ipynb"), *(out / "student").glob("*.ipynb")]
    return sorted(set(existing) - set(files))


def problems(out: Path, files: dict[Path, str]) -> list[str]:
    """What is missing, stale or orphaned under ``out``, compared with ``files``."""
    found = [f"{path}: missing" if not path.exists() else f"{path}: stale"
             for path, text in sorted(files.items())
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    return found + [f"{path}: has no source" for path in orphans(out, files)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / COLAB, help="folder of the copies")
    parser.add_argument("--check", action="store_true", help="only check that OUT is up to date")
    args = parser.parse_args(argv)
    files = outputs(args.out)
    if args.check:
        found = problems(args.out, files)
        print("\n".join(found) or f"{args.out} is up to date")
        if found:
            print("run `make colab` to regenerate them")
        return 1 if found else 0
    for path in orphans(args.out, files):
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} notebooks under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
