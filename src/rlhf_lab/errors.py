"""Errors the CLI turns into one red line and exit code 2 (no traceback).

User text in a message (a params key, a data value, a server's answer) is echoed through
:func:`clip`, which bounds its length, and the line is printed through :func:`literal`, which
shows control characters, terminal escapes and line breaks as ``\\x1b``-style escapes: a
message is one line of plain text whatever the input held. :func:`scrub` removes secrets (the
judge's API key, any ``Authorization`` / ``Bearer`` value) from text before it is printed or
written: :func:`literal` applies it to every printed line, and every file writer the judge
feeds applies it to the server's words.
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


_SECRETS: set[str] = set()
_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)(\s+)[\w.~+/=-]{8,}")
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization\W{0,4}?[:=]\W{0,4}?)[^\s\"',;}\]]+")
REDACTED = "[redacted]"
"""What stands in a printed or written text where a secret was."""


def register_secret(value: str) -> None:
    """Have :func:`scrub` remove ``value`` (an API key read from the environment) from now on."""
    if len(value) >= 4:  # a 1-3 character "key" would redact ordinary words
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """``text`` without any registered secret nor ``Authorization: …`` / ``Bearer …`` value
    (a server may echo the request, headers and all, in an error or even in its answer)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _CREDENTIALS.sub(rf"\1\2{REDACTED}", text)
    return _AUTH_HEADER.sub(rf"\1{REDACTED}", text)


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
    """``text`` as one printable line, secrets scrubbed, unsafe characters as escapes
    (``\\n``, ``\\x1b``, ``\\ud800``), at most ``limit``
    characters. Print it with markup off (rich would read ``[red]`` in a params key as a
    style)."""
    safe = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), scrub(text))
    if len(safe) > limit:
        safe = f"{safe[:limit]}… ({len(safe) - limit} more characters)"
    return safe
