"""Errors the CLI turns into one red line and exit code 2 (no traceback).

User text in a message (a params key, a data value, a server's answer) is echoed through
:func:`clip`, which bounds its length, and the line is printed through :func:`literal`, which
shows control characters, terminal escapes and line breaks as ``\\x1b``-style escapes: a
message is one line of plain text whatever the input held.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

MAX_ECHO_CHARS = 200
"""Longest user value an error message repeats (a 300-byte YAML alias bomb once printed 312 MB)."""
MAX_LINE_CHARS = 2_000
"""Longest error line printed, whatever the message holds."""

# C0 and C1 controls (newline and ESC among them), DEL, line/paragraph separators, bidi
# overrides and isolates (Trojan Source, CVE-2021-42574), and lone surrogates, which no
# terminal encoding can write.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


# reprlib bounds the work too, not only the result: a huge or deep value is never fully repr'd.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, MAX_ECHO_CHARS, MAX_ECHO_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


class RlhfLabError(Exception):
    """A user-facing error: bad params, bad input data, a model source that can't be found."""


class ConfigError(RlhfLabError):
    """params.yaml is malformed: unknown key, wrong type, bad combination."""


class DataError(RlhfLabError):
    """Input data is unusable (too many invalid rows, missing file...)."""


class ModelSourceError(RlhfLabError):
    """A model source could not be resolved or loaded."""


class StageBusyError(RlhfLabError):
    """Another run of the same stage holds its lock in this checkout."""


class NonFiniteLossError(RlhfLabError):
    """Too many optimiser steps were skipped because the loss or gradient was not finite."""


def clip(value: Any, limit: int = MAX_ECHO_CHARS, *, quote: bool = True) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how much was left out: what an
    error message writes where it would write ``{value!r}`` (``quote=False``: a str as is,
    for ``{value}``)."""
    text = value if isinstance(value, str) and not quote else _REPR.repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def literal(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` as one printable line: unsafe characters as escapes (``\\n``, ``\\x1b``,
    ``\\ud800``), at most ``limit`` characters. Print it with markup off (rich would read
    ``[red]`` in a params key as a style)."""
    safe = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    if len(safe) > limit:
        safe = f"{safe[:limit]}… ({len(safe) - limit} more characters)"
    return safe
