"""The shell commands a README shows, read from its fenced ```bash blocks.

Every ```bash block is a recipe a user can paste: its commands run in order, each as its own process.
A command ends at a line without a trailing backslash; whole-line comments are dropped; a trailing
``# error: ...`` comment marks a documented mistake, which must end in one ``error:`` line and a
non-zero exit. Blocks of any other language (```text, ```python) are not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\S*)\s*$")
ERROR_MARK = re.compile(r"\s#\s*error:.*$")


@dataclass(frozen=True)
class Command:
    text: str  # as the user types it, continuations joined, a trailing comment kept
    source: str  # "README.md:42", where it starts
    expect_error: bool


def bash_commands(readme: Path, root: Path) -> list[Command]:
    """Every command of every ```bash block of ``readme``, in order."""
    commands: list[Command] = []
    language, current, start = None, "", 0
    name = readme.relative_to(root).as_posix()
    for number, raw in enumerate(readme.read_text().splitlines(), start=1):
        fence = FENCE.match(raw.strip())
        if fence:
            if language is not None and current:
                raise ValueError(f"{name}:{start}: the command ends with a backslash before its block does")
            language = None if language is not None else fence.group(1)
            continue
        if language != "bash":
            continue
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if not current:
            start = number
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        text = current + line
        commands.append(Command(text, f"{name}:{start}", bool(ERROR_MARK.search(text))))
        current = ""
    return commands
