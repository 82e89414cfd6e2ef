"""Collect what the docs ask a reader to run or look up: ```python blocks, ``repalign``
command lines, and the names, options, overrides, links, files and ``make`` targets the
prose cites.

Only what ``tests/test_docs.py`` needs: a line-based Markdown reader that knows fenced
blocks, ATX headings and inline code spans, and the ``<!-- docs-test: ... -->`` marker
comment that may stand (blank lines aside) right before a fenced block.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the pages whose code is tested
DOC_FILES: tuple[Path, ...] = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: fence languages whose lines are shell command lines (an unlabelled fence counts too)
SHELL_LANGS = frozenset({"", "bash", "sh", "shell", "console", "zsh"})
#: programs whose own options inline spans may show (``pip install --no-deps ...``)
OTHER_PROGRAMS = frozenset({"pip", "torchrun", "make", "git", "bash", "sh", "srun", "sbatch"})
#: launchers whose ``-m repalign`` runs the repalign command
LAUNCHERS = frozenset({"torchrun", "python", "python3"})

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(skip|slow)\s*(?:\((.*)\))?\s*-->\s*$")
_ANY_MARKER = re.compile(r"<!--\s*docs-test:")
_INLINE = re.compile(r"(?<!`)`(repalign [^`]+)`(?!`)")
_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
_SCRIPT = re.compile(r"\bbenchmarks/\w+\.py\b")
_OVERRIDE = re.compile(r"\[?([a-z_]+(?:\.[a-z_]+)+=(?:\{[^}]*\}|[^\s\]]+))\]?")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:benchmarks|configs|docs|repalign|tests)/[\w./-]*\w)")
_DOTTED = re.compile(r"(?<!`)`(repalign(?:\.\w+)+)(?:\(\))?`(?!`)")


@dataclass(frozen=True)
class Marker:
    """``<!-- docs-test: skip (why) -->`` or ``<!-- docs-test: slow -->``."""

    kind: str  # "skip" | "slow"
    reason: str


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int  # 1-based line of the opening fence
    heading: str  # the nearest heading above it ("" before the first)
    lang: str
    source: str
    marker: Marker | None = None

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    @property
    def test_id(self) -> str:
        return f"{self.where} {self.heading}".strip()


@dataclass(frozen=True)
class CommandLine:
    """One documented ``repalign ...`` command: its text and its argv after ``repalign``."""

    path: Path
    line: int
    heading: str
    text: str
    argv: tuple[str, ...]
    inline: bool  # from a `code span` in prose (a bare verb there names the command)
    marker: Marker | None = field(default=None)

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    @property
    def test_id(self) -> str:
        return f"{self.where} repalign {' '.join(self.argv)}"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _marker_before(lines: list[str], index: int, path: Path) -> Marker | None:
    """The marker comment on the nearest non-blank line above ``lines[index]``, if any."""
    for j in range(index - 1, -1, -1):
        text = lines[j].strip()
        if not text:
            continue
        found = _MARKER.match(text)
        if found:
            kind, reason = found.group(1), (found.group(2) or "").strip()
            if kind == "skip" and not reason:
                raise ValueError(
                    f"{path}:{j + 1}: a docs-test skip marker needs its reason, "
                    "e.g. <!-- docs-test: skip (needs a GPU) -->"
                )
            return Marker(kind, reason)
        if _ANY_MARKER.search(text):
            raise ValueError(
                f"{path}:{j + 1}: unreadable docs-test marker {text!r}; write "
                "<!-- docs-test: skip (REASON) --> or <!-- docs-test: slow -->"
            )
        return None
    return None


def read_page(path: Path) -> tuple[list[Block], list[tuple[int, str, str]]]:
    """The fenced blocks of a page, and its prose (paragraphs and headings) as
    ``(first line, heading, text)``; a paragraph's lines are joined by newlines
    (:func:`line_of` maps a match back to its line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str, str]] = []
    heading = ""
    fence: tuple[str, str, int, Marker | None] | None = None  # (token, lang, line, marker)
    body: list[str] = []
    paragraph: list[str] = []
    start = 0

    def flush() -> None:
        if paragraph:
            prose.append((start, heading, "\n".join(paragraph)))
            paragraph.clear()

    for i, line in enumerate(lines):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and line.strip().startswith(fence[0]) and not opened.group(2):
                source = textwrap.dedent("\n".join(body) + "\n")  # a block in a list item
                blocks.append(Block(path, fence[2], heading, fence[1], source, fence[3]))
                fence, body = None, []
            else:
                body.append(line)
            continue
        if opened:
            flush()
            fence = (
                opened.group(1),
                opened.group(2).lower(),
                i + 1,
                _marker_before(lines, i, path),
            )
            continue
        found = _HEADING.match(line)
        if found:
            flush()
            heading = found.group(2)
            prose.append((i + 1, heading, heading))  # its code spans count as prose's
            continue
        if not line.strip():
            flush()
            continue
        if not paragraph:
            start = i + 1
        paragraph.append(line.strip())
    if fence is not None:
        raise ValueError(f"{path}:{fence[2]}: code fence never closed")
    flush()
    return blocks, prose


def line_of(first: int, text: str, match: re.Match) -> int:
    """The page line where ``match`` (in a paragraph starting at line ``first``) starts."""
    return first + text.count("\n", 0, match.start())


def _one_line(span: str) -> str:
    return " ".join(span.split())


def python_blocks(paths: tuple[Path, ...] = DOC_FILES) -> list[Block]:
    """Every ```python block of the pages."""
    return [b for p in paths for b in read_page(p)[0] if b.lang in ("python", "py")]


def _logical_lines(source: str) -> list[tuple[int, str]]:
    """Shell lines with ``\\`` continuations joined: ``(offset of first line, text)``."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for k, raw in enumerate(source.splitlines()):
        if not pending:
            first = k
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        out.append((first, " ".join(part.strip() for part in pending)))
        pending = []
    if pending:
        out.append((first, " ".join(part.strip() for part in pending)))
    return out


def repalign_argv(text: str) -> tuple[str, ...] | None:
    """The arguments after ``repalign`` (or ``torchrun/python ... -m repalign``), else None."""
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:]
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in a non-command line
        return None
    if not tokens:
        return None
    if tokens[0] == "repalign":
        return tuple(tokens[1:])
    if tokens[0] in LAUNCHERS:
        for k in range(len(tokens) - 1):
            if tokens[k] == "-m" and tokens[k + 1] == "repalign":
                return tuple(tokens[k + 2 :])
    return None


def command_lines(paths: tuple[Path, ...] = DOC_FILES) -> list[CommandLine]:
    """Every ``repalign`` command line of the shell blocks and inline code spans."""
    found: list[CommandLine] = []
    for path in paths:
        blocks, prose = read_page(path)
        for block in blocks:
            if block.lang not in SHELL_LANGS:
                continue
            for offset, text in _logical_lines(block.source):
                argv = repalign_argv(text)
                if argv is not None:
                    line = block.line + 1 + offset
                    found.append(
                        CommandLine(path, line, block.heading, text, argv, False, block.marker)
                    )
        for line, heading, text in prose:
            for span in _INLINE.finditer(text):
                argv = repalign_argv(span.group(1))
                if argv is not None:
                    where = line_of(line, text, span)
                    found.append(
                        CommandLine(path, where, heading, _one_line(span.group(1)), argv, True)
                    )
    return found


@dataclass(frozen=True)
class DottedName:
    """A ``repalign.module.name`` the prose points the reader to."""

    path: Path
    line: int
    name: str

    @property
    def test_id(self) -> str:
        return f"{_shown(self.path)}:{self.line} {self.name}"


def dotted_names(paths: tuple[Path, ...] = DOC_FILES) -> list[DottedName]:
    """Every inline code span of the prose that is a dotted ``repalign.`` name."""
    found = []
    for path in paths:
        for line, _heading, text in read_page(path)[1]:
            found += [
                DottedName(path, line_of(line, text, m), m.group(1)) for m in _DOTTED.finditer(text)
            ]
    return found


@dataclass(frozen=True)
class InlineFlag:
    """An ``--option`` the prose names in a code span, with the benchmark scripts its
    paragraph names (``python benchmarks/train.py ... --peak-tflops``)."""

    path: Path
    line: int
    flag: str
    span: str
    scripts: tuple[str, ...]

    @property
    def test_id(self) -> str:
        return f"{_shown(self.path)}:{self.line} {self.flag}"


def inline_flags(paths: tuple[Path, ...] = DOC_FILES) -> list[InlineFlag]:
    """Every ``--option`` in a prose code span that is not a whole ``repalign`` command
    nor another program's command line (``OTHER_PROGRAMS``; ``python`` other than
    ``python benchmarks/X.py``)."""
    found = []
    for path in paths:
        for line, _heading, text in read_page(path)[1]:
            scripts = tuple(dict.fromkeys(_SCRIPT.findall(text)))
            for span in _SPAN.finditer(text):
                first = span.group(1).split()[0]
                if first == "repalign":
                    continue  # checked whole by the command-line test
                if first in OTHER_PROGRAMS or (
                    first.startswith("python") and not _SCRIPT.search(span.group(1))
                ):
                    continue  # another program's options (pip install --no-deps ...)
                where = line_of(line, text, span)
                for flag in _FLAG.findall(span.group(1)):
                    found.append(InlineFlag(path, where, flag, _one_line(span.group(1)), scripts))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Overrides:
    """A prose code span made only of ``section.key=value`` config overrides."""

    path: Path
    line: int
    span: str
    items: tuple[str, ...]

    @property
    def test_id(self) -> str:
        return f"{_shown(self.path)}:{self.line} {self.span}"


def config_overrides(paths: tuple[Path, ...] = DOC_FILES) -> list[Overrides]:
    """Every prose code span that consists of dotted ``key=value`` overrides
    (``optim.lr=1e-3``; optional ones in brackets)."""
    found = []
    for path in paths:
        for line, _heading, text in read_page(path)[1]:
            for span in _SPAN.finditer(text):
                body = _one_line(span.group(1))
                items = _OVERRIDE.findall(body)
                if items and not _OVERRIDE.sub("", body).strip():
                    found.append(Overrides(path, line_of(line, text, span), body, tuple(items)))
    return found


@dataclass(frozen=True)
class Reference:
    """A link target (``[text](training.md#anchor)``, an image) or a repository path the
    prose cites (``benchmarks/results/h200_extract_cuda.txt``)."""

    path: Path
    line: int
    target: str
    kind: str  # "link" | "path"

    @property
    def test_id(self) -> str:
        return f"{_shown(self.path)}:{self.line} {self.target}"


def references(paths: tuple[Path, ...] = DOC_FILES) -> list[Reference]:
    """Every relative link or image of the prose and every repository path it names."""
    found = []
    for path in paths:
        for line, _heading, text in read_page(path)[1]:
            for link in _LINK.finditer(text):
                target = link.group(1) or link.group(2)
                if "://" not in target and not target.startswith("mailto:"):
                    found.append(Reference(path, line_of(line, text, link), target, "link"))
            for cited in _REPO_PATH.finditer(text):
                found.append(Reference(path, line_of(line, text, cited), cited.group(1), "path"))
    return list(dict.fromkeys(found))


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``: lower case, punctuation dropped,
    spaces to hyphens, repeats numbered ``-1``, ``-2`` ..."""
    seen: dict[str, int] = {}
    anchors = set()
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        opened = _FENCE.match(line)
        if opened:
            if fence is None:
                fence = opened.group(1)
            elif not opened.group(2):  # a bare fence closes the block
                fence = None
            continue
        found = None if fence else _HEADING.match(line)
        if not found:
            continue
        text = found.group(2)
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def make_targets(paths: tuple[Path, ...] = DOC_FILES) -> list[tuple[str, int, str]]:
    """``(where, line, target)`` for every ``make TARGET`` of the shell fences and prose."""
    found = []
    for path in paths:
        blocks, prose = read_page(path)
        for block in blocks:
            if block.lang in SHELL_LANGS:
                for offset, text in _logical_lines(block.source):
                    tokens = text.split("#")[0].split()
                    if tokens[:1] == ["make"]:
                        line = block.line + 1 + offset
                        found += [(_shown(path), line, t) for t in tokens[1:] if "=" not in t]
        for line, _heading, text in prose:
            for span in _SPAN.finditer(text):
                tokens = span.group(1).split()
                if tokens[:1] == ["make"]:
                    where = line_of(line, text, span)
                    found += [(_shown(path), where, t) for t in tokens[1:] if "=" not in t]
    return list(dict.fromkeys(found))
