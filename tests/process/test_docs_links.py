"""The docs say only what is there: links resolve, named files exist, options are real.

README.md and docs/*.md are read as markdown (fenced and indented code
blocks and code spans told apart from prose).  Three checks:

- every relative link, inline (``[text](target)``) or by reference
  (``[label]: target``), names a file inside the repository, and its
  ``#anchor``, when the target is markdown, names one of its headings
  (GitHub's heading ids);
- a code span that names a repository path (its first component is a
  top-level entry of the repository, or it starts with ``../``) names one that
  exists: the README once pointed at ``../shared/DESIGN.md``, outside the
  repository;
- every ``--option`` belongs to a program that has it, read from that
  program's own help: supervise-smtp and its subcommands, the benchmark
  scripts, scripts/install.sh.  An option is credited to the command it
  follows on its line (``pip install --user``: pip's, not checked); an option
  on its own (a table cell, ```--capture```) must exist in one of them.

The checkers are also run on small made-up documents, so that each is seen
to fail on what it is there to catch.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from helpers import wrapper_argv

from supervise_smtp import cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# -- reading markdown --------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(<[^>]*>|\S+)")
_REF_USE = re.compile(r"\[((?:[^\[\]\\]|\\.)+)\]\[([^\]]*)\]")
_HTML_ID = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.I)


@dataclass(frozen=True)
class Line:
    """One line of a markdown file: its number, text, and whether it is code."""

    number: int
    text: str
    code: bool


def lines_of(text: str) -> list[Line]:
    """The lines, each marked as code (fenced or indented block) or not."""
    out: list[Line] = []
    fence: str | None = None
    prev_blank, in_indented = True, False
    for number, raw in enumerate(text.splitlines(), 1):
        if fence is not None:
            out.append(Line(number, raw, True))
            if raw.strip().startswith(fence):
                fence = None
            continue
        match = _FENCE.match(raw)
        if match:
            fence = match.group(1)
            out.append(Line(number, raw, True))
            continue
        blank = not raw.strip()
        indented = raw.startswith(("    ", "\t"))
        # an indented block starts after a blank line (not inside a list item's text)
        in_indented = indented and (in_indented or prev_blank) and not blank or (
            in_indented and blank)
        out.append(Line(number, raw, in_indented and not blank))
        prev_blank = blank
    return out


def prose(line: Line) -> str:
    """A prose line with its code spans blanked out (a link in code is not a link)."""
    return _SPAN.sub(lambda m: " " * len(m.group(0)), line.text)


def code_spans(line: Line) -> list[str]:
    """The code spans of a prose line."""
    return [m.group(2).strip() for m in _SPAN.finditer(line.text)]


def slug(heading: str) -> str:
    """The id GitHub gives a heading: rendered text, lowercased, punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "").lower()
    kept = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a link may name in this markdown: heading ids (-1, -2 for repeats)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    lines = lines_of(text)
    for i, line in enumerate(lines):
        heading = None
        if not line.code:
            match = _ATX.match(line.text)
            if match:
                heading = match.group(2)
            elif (i + 1 < len(lines) and re.fullmatch(r" {0,3}(=+|-+)\s*", lines[i + 1].text)
                  and line.text.strip() and not line.text.lstrip().startswith(("|", "-", "*"))):
                heading = line.text.strip()  # setext
            found.update(_HTML_ID.findall(line.text))
        if heading is None:
            continue
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


# -- the checks, on any document -----------------------------------------------

def link_targets(text: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link and reference definition outside code."""
    targets: list[tuple[int, str]] = []
    for line in lines_of(text):
        if line.code:
            continue
        plain = prose(line)
        targets += [(line.number, m.group(1).strip("<>")) for m in _INLINE_LINK.finditer(plain)]
        ref = _REF_DEF.match(plain)
        if ref:
            targets.append((line.number, ref.group(2).strip("<>")))
    return targets


def undefined_references(text: str) -> list[str]:
    """Labels used as ``[text][label]`` (or ``[label][]``) with no ``[label]:`` line."""
    lines = [line for line in lines_of(text) if not line.code]
    defined = {m.group(1).lower() for m in (_REF_DEF.match(prose(ln)) for ln in lines) if m}
    missing = []
    for line in lines:
        for m in _REF_USE.finditer(prose(line)):
            label = (m.group(2) or m.group(1)).lower()
            if label not in defined:
                missing.append(f"line {line.number}: [{label}]")
    return missing


def broken_links(doc: Path, text: str, repo: Path) -> list[str]:
    """The relative links of ``text`` (the file ``doc``) that do not resolve in ``repo``."""
    problems = []
    for number, target in link_targets(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", target):
            continue  # https:, mailto:...: not a file of ours
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        where = f"{doc.name}:{number}: {target}"
        if not dest.is_relative_to(repo.resolve()):
            problems.append(f"{where}: outside the repository")
        elif not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


_PATHLIKE = re.compile(r"[A-Za-z0-9._/+-]+")


def missing_paths(doc: Path, text: str, repo: Path, top: set[str]) -> list[str]:
    """Code spans naming a repository path (``docs/x.md``, ``../y``) that does not exist."""
    problems = []
    for line in lines_of(text):
        if line.code:
            continue
        for span in code_spans(line):
            if not _PATHLIKE.fullmatch(span) or "/" not in span:
                continue
            if not (span.startswith("../") or span.split("/")[0] in top):
                continue  # `log/run`, `main/current`: inside a service dir, not ours
            candidates = [(repo / span).resolve(), (doc.parent / span).resolve()]
            if not any(c.is_relative_to(repo.resolve()) and c.exists() for c in candidates):
                problems.append(f"{doc.name}:{line.number}: `{span}` is not in the repository")
    return problems


_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
# Words after which the next word is the command itself.
_LAUNCHERS = {"exec", "sudo", "env", "sh", "bash", "nohup", "time", "python", "python3",
              ".venv/bin/python", "$", "#"}


def _owner_word(word: str) -> str | None:
    """Which of our programs a command word is, or None when it is not ours."""
    word = word.strip("\"'")
    name = word.rsplit("/", 1)[-1]
    if name in ("supervise-smtp", "$SUPERVISE_SMTP", "${SUPERVISE_SMTP}", "supervise_smtp",
                *cli.SUBCOMMANDS):
        return "supervise-smtp"
    return {"bench.sh": "bench/suite.py", "suite.py": "bench/suite.py",
            "serve_soak.py": "bench/serve_soak.py",
            "observer_throughput.py": "bench/observer_throughput.py",
            "report_bench.py": "bench/report_bench.py",
            "install.sh": "scripts/install.sh"}.get(name)


_COMMAND = re.compile(r"[A-Za-z0-9_.~/$][A-Za-z0-9_.~/+${}-]*")


def _command_word(words: list[str]) -> str | None:
    """The command a shell segment runs, past launchers and VAR=value.

    None when the segment does not start with a command: an option (`--capture
    DIR`, a help text's option column), or a word no command has (`event=...`,
    `connections:`).  ``python -m X`` runs X.
    """
    words = [w.strip("\"'") for w in words]
    for i, word in enumerate(words):
        if not word or word in _LAUNCHERS or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", word):
            continue
        if word == "-m" and i + 1 < len(words):
            return words[i + 1]
        return word if _COMMAND.fullmatch(word) else None
    return None


def option_owners(text: str) -> list[tuple[int, str, str | None]]:
    """(line, --option, owner) for every option: owner is one of ours, "foreign" or None.

    A code block's logical line (continuations joined) and each code span is
    split into shell segments (`` | `` ; && ||); an option belongs to the last of
    our program words before it in its segment, else to the segment's command
    (a foreign one: not checked); with no command at all (a table cell, an
    option named on its own), owner None: it must be in one of our helps.
    """
    found: list[tuple[int, str, str | None]] = []

    def scan(number: int, snippet: str, commands: bool) -> None:
        for segment in re.split(r"\|\||&&|;| \| ", snippet):  # not tag|pass
            words = segment.split()
            command = _command_word(words) if commands else None
            for m in _OPTION.finditer(segment):
                before = segment[:m.start()].split()
                ours = [o for o in map(_owner_word, before) if o is not None]
                if ours:
                    owner: str | None = ours[-1]
                elif command is not None:
                    owner = _owner_word(command) or "foreign"
                else:
                    owner = None
                found.append((number, "--" + m.group(1), owner))

    lines = lines_of(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.code:
            joined, number = line.text, line.number
            while joined.rstrip().endswith("\\") and i + 1 < len(lines) and lines[i + 1].code:
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].text
            scan(number, joined, True)
        else:
            for span in code_spans(line):
                scan(line.number, span, True)
            scan(line.number, prose(line), False)
        i += 1
    return found


def unknown_options(text: str, known: dict[str, set[str]]) -> list[str]:
    """Options named in ``text`` that the program they belong to does not have."""
    everything = set().union(*known.values())
    problems = []
    for number, option, owner in option_owners(text):
        if owner == "foreign":
            continue
        allowed = everything if owner is None else known.get(owner, set())
        if option not in allowed:
            problems.append(f"line {number}: {option} ({owner or 'no program named'})")
    return problems


# -- what the programs say they accept ------------------------------------------

def _help(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _options_in(text: str) -> set[str]:
    return {"--" + m.group(1) for m in _OPTION.finditer(text)}


@cache
def known_options() -> dict[str, set[str]]:
    """Each of our programs' options, from its own --help (or usage, or parser)."""
    ours = wrapper_argv()
    wrapper = "".join(_help([*ours, *sub, "--help"])
                      for sub in ([], *([name] for name in cli.SUBCOMMANDS)))
    known = {
        "supervise-smtp": _options_in(wrapper),
        "bench/suite.py": _options_in(_help([sys.executable, "bench/suite.py", "--help"])),
        "bench/serve_soak.py": _options_in(
            _help([sys.executable, "bench/serve_soak.py", "--help"])),
        "bench/report_bench.py": _options_in(
            _help([sys.executable, "bench/report_bench.py", "--help"])),
        # no --help (any argument it does not know is ignored): its usage docstring
        "bench/observer_throughput.py": _options_in(ast.get_docstring(ast.parse(
            (REPO / "bench" / "observer_throughput.py").read_text())) or ""),
    }
    install = REPO / "scripts" / "install.sh"
    # the options its argument loop matches (never run here: it installs)
    known["scripts/install.sh"] = _options_in(install.read_text()) if install.exists() else set()
    return known


def _top_level() -> set[str]:
    """The repository's top-level files and directories (tracked ones when git knows)."""
    proc = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True,
                          text=True, check=False)
    if proc.returncode == 0 and proc.stdout:
        return {path.split("/")[0] for path in proc.stdout.splitlines()}
    return {p.name for p in REPO.iterdir() if not p.name.startswith(".")}


# -- the repository's docs -------------------------------------------------------

def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(REPO))


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_docs_relative_links_resolve_inside_the_repository(doc):
    """Every relative link (inline or reference) names a repository file and heading."""
    text = doc.read_text(encoding="utf-8")
    assert broken_links(doc, text, REPO) == []
    assert undefined_references(text) == []


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_docs_code_span_paths_exist_in_the_repository(doc):
    """A code span naming a repository path (`docs/serve.md`, `../x`) names one that exists."""
    assert missing_paths(doc, doc.read_text(encoding="utf-8"), REPO, _top_level()) == []


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_docs_name_only_options_the_programs_have(doc):
    """Every --option in the docs is in the help of the program it is given to."""
    assert unknown_options(doc.read_text(encoding="utf-8"), known_options()) == []


def test_docs_readme_links_the_design_in_the_repository():
    """README's design link is docs/design.md, which covers modes, verdicts and budgets."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    design = {t.partition("#")[0] for _, t in link_targets(readme) if "design" in t.lower()}
    assert design == {"docs/design.md"}
    assert {"two-modes-one-session", "one-connection", "verdicts", "budgets"} <= anchors(
        (REPO / "docs" / "design.md").read_text(encoding="utf-8"))


def test_docs_options_known_include_every_subcommand():
    """The collected helps hold options of the wrapper and of each subcommand."""
    known = known_options()["supervise-smtp"]
    assert {"--capture", "--bare-lf", "--drain", "--stats-interval", "--dry-run",
            "--wrapper"} <= known  # the wrapper's, serve's, wrap-run's


# -- the checkers catch what they are for ---------------------------------------

_SAMPLE = """\
# Title

## 2. Set up (the `conf` file)

See [the guide](guide.md), [a section](#2-set-up-the-conf-file), [gone](#nowhere),
[outside](../../shared/DESIGN.md), [web](https://example.org/x.md) and [ref][r].
A [missing][nolabel] reference; `docs/nothing.md` and `../shared/DESIGN.md`;
`log/run` is a service dir's file, not ours.

[r]: guide.md#setup

    code [not a link](missing.md) --not-checked-here-either

```
supervise-smtp --bogus -- prog
pip install --user .
```

Run `sh scripts/bench.sh --quick` or `sh scripts/bench.sh --capture`; a cell: `--made-up`.
"""


def test_docs_checkers_report_what_is_wrong(tmp_path):
    """Broken links, anchors, references, paths and options in a made-up doc are all reported."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "guide.md").write_text("# Guide\n\nSetup\n-----\n")
    doc = repo / "docs" / "sample.md"
    doc.write_text(_SAMPLE)
    assert broken_links(doc, _SAMPLE, repo) == [
        "sample.md:5: #nowhere: no heading #nowhere in sample.md",
        "sample.md:6: ../../shared/DESIGN.md: outside the repository",
    ]
    assert undefined_references(_SAMPLE) == ["line 7: [nolabel]"]
    assert missing_paths(doc, _SAMPLE, repo, {"docs"}) == [
        "sample.md:7: `docs/nothing.md` is not in the repository",
        "sample.md:7: `../shared/DESIGN.md` is not in the repository",
    ]
    known = {"supervise-smtp": {"--capture"}, "bench/suite.py": {"--quick"}}
    assert unknown_options(_SAMPLE, known) == [
        "line 15: --bogus (supervise-smtp)",
        "line 19: --capture (bench/suite.py)",
        "line 19: --made-up (no program named)",
    ]


def test_docs_slug_follows_github_heading_ids():
    """Heading ids: lowercase, punctuation dropped, spaces to hyphens, repeats numbered."""
    text = ("## 3a. Resident mode: supervise-smtp serve\n"
            "### runit (`runit/qmail-smtpd/`)\n## Notes\n## Notes\n")
    assert anchors(text) == {"3a-resident-mode-supervise-smtp-serve",
                             "runit-runitqmail-smtpd", "notes", "notes-1"}
