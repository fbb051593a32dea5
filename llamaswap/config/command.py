"""
Model commands as written in the configuration: comment lines, backslash
continuations and POSIX-shell quoting.
"""

from __future__ import annotations

import shlex


def strip_comments(text: str) -> str:
    """
    Drop the lines of a command whose first non-blank character is C{#}.
    """
    return "\n".join(line for line in text.split("\n") if not line.strip().startswith("#"))


def split_command(text: str) -> list[str]:
    """
    Split a configured command into arguments like a POSIX shell would:
    comment lines are dropped, a trailing backslash joins a line to the next,
    quotes group words.

    @raise ValueError: for an empty command or unbalanced quotes.
    """
    lines = []
    for line in text.split("\n"):
        trimmed = line.strip()
        if trimmed.startswith("#"):
            continue
        if trimmed.endswith("\\"):
            lines.append(trimmed[:-1] + " ")
        else:
            lines.append(line)
    args = shlex.split("\n".join(lines), comments=False, posix=True)
    if not args:
        raise ValueError("empty command")
    return args
