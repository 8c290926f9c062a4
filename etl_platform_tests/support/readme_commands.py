"""The README's shell commands, extracted faithfully: every fenced ```bash block, comments
stripped, `\\` continuations joined, `&&` chains split into steps, each step with its README
line. A few steps cannot run inside a test; NOT_RUN names them and says why (and where they are
covered instead). Everything else runs, as written, in README order (test_readme_commands.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# (pattern over one step, why it is not run in the test): keep this list short and explicit
NOT_RUN: tuple[tuple[str, str], ...] = (
    (r"^python3 -m venv \.venv$", "creates the virtualenv: the test runs in the one running pytest (linked as .venv); "
     ".ci/run creates it from a clean clone"),
    (r"^\.venv/bin/pip install\b", "installs the package: .ci/run does it from a clean clone before the tests"),
    (r"(^|/)pytest\b", "the test suite this test belongs to: .ci/run runs it"),
    (r"(^|/)(dagster|dg) dev\b", "serves the UI until stopped: test_browser.py starts it and drives the UI"),
)
# a block with one of these is a procedure for another machine: none of its steps runs here
BLOCK_NOT_RUN: tuple[tuple[str, str], ...] = (
    (r"^docker\b", "Docker Compose procedure: needs a Docker engine (none here); .ci/lint-deploy checks the files"),
    (r"^createdb\b", "the local PostgreSQL recipe: test_readme_commands.py's test_the_local_postgres_recipe_runs runs "
     "it against fresh databases (marker postgres)"),
)


@dataclass(frozen=True)
class Step:
    """One command of the README: where it is, the command as written, and why it is not run (None: run)."""

    line: int
    section: str
    command: str
    background: bool = False
    not_run: str | None = None


def _strip_comment(line: str) -> str:
    """The line without its `# comment` (a `#` that starts a word, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _split_and(command: str) -> list[str]:
    """`a && b && c` -> [a, b, c] (`&&` outside quotes)."""
    parts, quote, start, i = [], None, 0, 0
    while i < len(command):
        char = command[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif command.startswith("&&", i):
            parts.append(command[start:i].strip())
            start, i = i + 2, i + 1
        i += 1
    parts.append(command[start:].strip())
    return [p for p in parts if p]


def _commands(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, command) of a block: comments stripped, continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in block:
        text = _strip_comment(raw)
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text.strip()
            pending = None
        if text.endswith("\\"):
            pending = (number, text[:-1].rstrip())
        elif text.strip():
            out.append((number, text.strip()))
    return out


def bash_blocks(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """(section heading, [(line number, line)]) of every ```bash block."""
    blocks, section, current = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        if current is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.strip() == "```bash":
                current = []
        elif line.strip() == "```":
            blocks.append((section, current))
            current = None
        else:
            current.append((number, line))
    return blocks


def readme_steps(text: str | None = None) -> list[Step]:
    """Every step of every bash block of the README, in order, each marked run or not (and why)."""
    text = README.read_text() if text is None else text
    steps: list[Step] = []
    for section, block in bash_blocks(text):
        block_steps = []
        for number, command in _commands(block):
            for part in _split_and(command):
                background = part.endswith("&") and not part.endswith("&&")
                block_steps.append((number, part[:-1].strip() if background else part, background))
        block_reason = next(
            (why for pattern, why in BLOCK_NOT_RUN for _n, c, _b in block_steps if re.search(pattern, c)), None
        )
        for number, command, background in block_steps:
            reason = block_reason or next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)
            steps.append(Step(number, section, command, background, reason))
    return steps
