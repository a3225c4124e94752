#!/usr/bin/env python3
"""Render docs/supervise-smtp.8.md to the troff man page docs/supervise-smtp.8.

Dependency-free; handles exactly the markdown subset the source uses:
``# HEADING``, paragraphs, ``**bold**``, ``*italic*``, ```code```, definition
items (a term line followed by ``:   description``), indented code blocks
and pipe tables (rendered as .TP lists, so no tbl preprocessor is needed).
The pandoc ``%`` title line is ignored; the .TH line is built here.

The OPTIONS section is not written by hand: it is rendered from the option
table, ``supervise_smtp.session.options.OPTIONS``, into the markdown first.

Run ``python docs/render_man.py`` after editing the markdown or the option
table and commit both files; tests/process/test_manpage.py fails when the page
differs from the markdown, tests/cli/test_options.py when the markdown's
OPTIONS differ from the table.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
from supervise_smtp.session.options import OPTIONS  # noqa: E402

SOURCE = DOCS / "supervise-smtp.8.md"
TARGET = DOCS / "supervise-smtp.8"
INIT = DOCS.parent / "supervise_smtp" / "__init__.py"
# Fixed so the output is reproducible; bump it when the page changes.
DATE = "2026-11-25"

_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*([^*\s][^*]*?)\*")


def version() -> str:
    """The package version, read from supervise_smtp/__init__.py without importing it."""
    match = re.search(r'^__version__ = "([^"]+)"', INIT.read_text(), re.M)
    if not match:
        raise SystemExit(f"no __version__ in {INIT}")
    return match.group(1)


def _escape(text: str, literal: bool) -> str:
    """Escape backslashes; dashes become \\- except word-internal hyphens in prose."""
    text = text.replace("\\", "\\e")
    if literal:
        return text.replace("-", "\\-")
    return re.sub(r"(?<![A-Za-z0-9])-|-(?![A-Za-z0-9])", r"\\-", text)


def inline(text: str, synopsis: bool = False) -> str:
    """Convert code spans, bold and italic of one line of markdown to troff fonts.

    In a synopsis the words of one [...] group are kept on one output line.
    """
    out: list[str] = []
    pos = 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[pos:match.start()], literal=False))
        code, bold, italic = match.groups()
        # Code spans do not break at their spaces.
        if code is not None:
            out.append(r"\fB" + _escape(code, literal=True).replace(" ", "\\ ") + r"\fR")
        elif bold is not None:
            out.append(r"\fB" + _escape(bold, literal=True) + r"\fR")
        else:
            out.append(r"\fI" + _escape(italic, literal=False) + r"\fR")
        pos = match.end()
    out.append(_escape(text[pos:], literal=False))
    result = "".join(out)
    if synopsis:
        result = re.sub(r"\[[^]]*\]", lambda m: m.group(0).replace(" ", "\\ "), result)
    # \% at the start of a word holding a font change: options, paths and
    # metavariables are never hyphenated.
    words = re.split(r"(?<!\\) ", result)
    return _line(" ".join("\\%" + w if "\\f" in w else w for w in words))


def _line(text: str) -> str:
    """Protect a text line from being read as a request or breaking early."""
    text = text.strip()
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _blocks(lines: list[str]) -> list[list[str]]:
    """Split into blank-line separated blocks, merging consecutive code blocks."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines + [""]:
        if line.strip():
            current.append(line.rstrip())
            continue
        if current:
            is_code = all(x.startswith("    ") for x in current)
            if is_code and blocks and blocks[-1][0] == "\0code":
                blocks[-1].extend(["    "] + current)
            else:
                blocks.append(["\0code"] + current if is_code else current)
            current = []
    return blocks


def _code(lines: list[str]) -> list[str]:
    out = [".RS 4", ".nf"]
    for line in lines:
        text = line[4:].replace("\\", "\\e").replace("-", "\\-")
        out.append("\\&" + text if text.startswith((".", "'")) else text)
    return out + [".fi", ".RE"]


def _definitions(lines: list[str]) -> list[str]:
    out: list[str] = []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and lines[i + 1].startswith(":   "):
            out += [".TP", inline(line)]
        elif line.startswith(":   "):
            out.append(inline(line[4:]))
        else:
            out.append(inline(line))
    return out


def _table(lines: list[str]) -> list[str]:
    out: list[str] = []
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    for cells in rows[2:]:  # skip the header row and the |---| rule
        first = cells[0]
        term = f"**{first}**" if re.fullmatch(r"[0-9]+", first) else f"*{first}*"
        out += [".TP", inline(term)] + [inline(c) for c in cells[1:]]
    return out


def _wrap(text: str, first: str, rest: str, width: int = 78) -> list[str]:
    """Fill ``text`` to ``width``, never breaking inside a code span (lines are rendered alone)."""
    parts = text.split("`")
    held = "`".join(p.replace(" ", "\0") if i % 2 else p for i, p in enumerate(parts))
    lines = textwrap.wrap(held, width, initial_indent=first, subsequent_indent=rest,
                          break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def options_markdown() -> str:
    """The body of the OPTIONS section, one definition item per row of the option table.

    The term is each spelling in bold and the metavar, its UPPERCASE parts
    (placeholders) in italics; "Needs ..." ends the text when the row needs others.
    """
    items = []
    for spellings, metavar, _, _, _, needs, _, text in OPTIONS:
        term = ", ".join(f"**{name}**" for name in spellings.split(", "))
        if metavar:
            term += " " + "|".join(f"*{p}*" if p.upper() == p else p
                                   for p in metavar.split("|"))
        if needs:
            text += "  Needs " + " and ".join(f"**{name}**" for name in needs) + "."
        items.append("\n".join([term, *_wrap(text, ":   ", "    ")]))
    return "\n\n".join(items) + "\n"


def with_options(markdown: str) -> str:
    """``markdown`` with its OPTIONS section (up to the next heading) rendered from the table."""
    match = re.search(r"^# OPTIONS\n\n(.*?)\n(?=# )", markdown, re.M | re.S)
    if not match:
        raise SystemExit(f"no # OPTIONS section in {SOURCE}")
    return markdown[:match.start(1)] + options_markdown() + markdown[match.end(1):]


def render(markdown: str, ver: str) -> str:
    """The troff man page for the markdown source, as a string."""
    out = [
        '.\\" Generated by docs/render_man.py from docs/supervise-smtp.8.md; do not edit.',
        f'.TH SUPERVISE-SMTP 8 "{DATE}" "supervise-smtp {ver}"',
    ]
    after_heading = False
    section = ""
    for block in _blocks(markdown.splitlines()):
        first = block[0]
        if first.startswith("% "):
            continue
        if first.startswith("# "):
            section = first[2:].strip().upper()
            out.append(".SH " + section)
            after_heading = True
            continue
        if first == "\0code":
            out += ([] if after_heading else [".PP"]) + _code(block[1:])
        elif first.startswith("|"):
            out += _table(block)
        elif any(x.startswith(":   ") for x in block):
            out += _definitions(block)
        else:
            if not after_heading:
                out.append(".PP")
            out += [inline(x, synopsis=section == "SYNOPSIS") for x in block]
        after_heading = False
    return "\n".join(out) + "\n"


def main() -> int:
    """Render the markdown's OPTIONS from the table, then docs/supervise-smtp.8 from it."""
    markdown = with_options(SOURCE.read_text(encoding="utf-8"))
    SOURCE.write_text(markdown, encoding="utf-8")
    text = render(markdown, version())
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {SOURCE} and {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
