"""The docstring task's row formats: functions with docstrings, and OpenAI HumanEval.

A *parser* turns one source record into zero or more :class:`~rlhf_lab.data.rows.Example` s
(:data:`rlhf_lab.data.sources.Parser`); :data:`PARSERS` gives each format's factory. The
docstring :class:`~rlhf_lab.tasks.base.Task` declares them, and ``prepare_preference`` hands
every task's factories to :func:`rlhf_lab.data.sources.make_parser` (``data`` never imports a
task: the layers contract). ``rlhf-lab generate --code`` builds its prompts with
:func:`docstring_prompt` and :func:`strip_docstring` too.

``docstring`` ``{"code", "docstring"}`` (also CodeSearchNet / CodeXGLUE column names); the
              prompt asks for the function's docstring, reference = the docstring,
              ``meta.code`` = the function source (its own docstring removed).
``humaneval`` ``{"task_id", "prompt", "canonical_solution", "entry_point"}`` (OpenAI HumanEval):
              reference = the entry point's docstring (its ``>>>`` examples included);
              ``meta.code`` = the function without it (signature + canonical solution),
              ``meta.setup`` = the rest of the prompt (imports, helper functions) that the
              docstring/doctest reward runs before the examples; the prompt is the docstring
              task's.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from rlhf_lab.config import DataConfig
from rlhf_lab.data.rows import Example
from rlhf_lab.data.sources import CODE_KEYS, DOC_KEYS, Parser, ParserFactory
from rlhf_lab.data.validate import (
    BAD_CODE,
    CODE_TOO_NESTED,
    Origin,
    RowError,
    content_key,
    first_present,
    require,
)
from rlhf_lab.errors import clip

DOCSTRING_INSTRUCTION = (
    "Write a docstring for this {language} function. Reply with the docstring text only, "
    "without quotes."
)


def docstring_prompt(code: str, language: str = "Python") -> list[dict[str, str]]:
    """The user message asking for ``code``'s docstring (every docstring prompt row has it)."""
    instruction = DOCSTRING_INSTRUCTION.format(language=language)
    return [{"role": "user", "content": f"{instruction}\n\n```{language.lower()}\n{code}\n```"}]


_NESTING_ERRORS = ("too many nested", "too many levels of indentation")
"""Prefixes of the SyntaxErrors CPython's parser raises for nesting past its fixed limits."""


def strip_docstring(code: str, field: str = "code") -> str:
    """``code`` without the first function's own docstring (CodeSearchNet's code keeps it).

    Code that does not parse (Python 2, truncated) is returned unchanged. Code nested deeper
    than the parser can take raises RowError(code_too_nested): no reward can analyse it.
    """
    try:
        tree = ast.parse(textwrap.dedent(code))
    except (RecursionError, MemoryError) as exc:
        # MemoryError here is the parser's own stack overflowing (e.g. 3000 nested lambdas),
        # not the process running out of memory.
        kind = type(exc).__name__
        raise RowError(CODE_TOO_NESTED, field, f"ast.parse raised {kind}") from None
    except SyntaxError as exc:
        if str(exc.msg).startswith(_NESTING_ERRORS):
            raise RowError(CODE_TOO_NESTED, field, f"ast.parse: {exc.msg}") from None
        return code
    except ValueError:
        return code
    func = next(
        (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
        None,
    )
    if func is None or not func.body:
        return code
    first = func.body[0]
    is_doc = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    # A docstring sharing a line with `def` (or the only statement) cannot be cut by lines.
    if not is_doc or first.lineno == func.lineno or len(func.body) == 1 or first.end_lineno is None:
        return code
    lines = code.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])


def parse_docstring(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One function: prompt asks for its docstring; reference = the docstring."""
    code_key = first_present(row, CODE_KEYS) or "code"
    doc_key = first_present(row, DOC_KEYS) or "docstring"
    code = strip_docstring(require(row, code_key, str), code_key).strip("\n")
    docstring = require(row, doc_key, str).strip()
    language = row.get("language")
    language = language.capitalize() if isinstance(language, str) and language else "Python"
    prompt = docstring_prompt(code, language)
    meta: dict[str, Any] = {"code": code, "origin": str(origin)}
    source_id = first_present(row, ("id", "url", "func_code_url", "func_name"))
    if source_id is not None:
        meta["source_id"] = str(row[source_id])
    return [
        Example(
            id=f"docstring-{content_key(code, docstring)}",
            # One function with two docstrings stays in one split.
            group=f"docstring-{content_key(code)}",
            prompt=prompt,
            reference=docstring,
            origin=origin,
            meta=meta,
        )
    ]


def _humaneval_parts(source: str, entry_point: str) -> tuple[str, str, str]:
    """(setup, function without its docstring, docstring) of ``entry_point`` in ``source``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = f"prompt + solution do not parse: {type(exc).__name__}"
        raise RowError(BAD_CODE, "canonical_solution", msg) from None
    func = next(
        (
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point
        ),
        None,
    )
    if func is None:
        raise RowError(BAD_CODE, "entry_point", f"no top-level function {clip(entry_point)}")
    # The first string statement: HumanEval/115 puts `import math` before its docstring.
    doc = next(
        (
            n
            for n in func.body
            if isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
        ),
        None,
    )
    if doc is None or len(func.body) < 2 or func.end_lineno is None or doc.end_lineno is None:
        raise RowError(BAD_CODE, "prompt", f"{clip(entry_point)} has no docstring and a body")
    docstring = inspect.cleandoc(doc.value.value)  # type: ignore[attr-defined]
    lines = source.splitlines(keepends=True)
    first = func.decorator_list[0] if func.decorator_list else func
    code = "".join(
        lines[first.lineno - 1 : doc.lineno - 1] + lines[doc.end_lineno : func.end_lineno]
    )
    setup = "".join(lines[: first.lineno - 1] + lines[func.end_lineno :])
    return setup.strip("\n"), code.strip("\n"), docstring.strip()


def parse_humaneval(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One HumanEval problem: the docstring is the reference, the function without it the code."""
    task_id = require(row, "task_id", str)
    source = require(row, "prompt", str) + require(row, "canonical_solution", str)
    setup, code, docstring = _humaneval_parts(source, require(row, "entry_point", str))
    return [
        Example(
            id=f"humaneval-{task_id.replace('/', '-')}",
            group=f"humaneval-{task_id}",
            prompt=docstring_prompt(code),  # the docstring task's prompt
            reference=docstring,
            origin=origin,
            meta={"code": code, "setup": setup, "source_id": task_id, "origin": str(origin)},
        )
    ]


def _bound(parse: Callable[..., list[Example]]) -> ParserFactory:
    """The factory of a parser that reads nothing but ``data.max_turns``."""

    def factory(cfg: DataConfig) -> Parser:
        return partial(parse, max_turns=cfg.max_turns)

    return factory


PARSERS: dict[str, ParserFactory] = {
    "docstring": _bound(parse_docstring),
    "humaneval": _bound(parse_humaneval),
}
"""The docstring formats by ``data.format`` (:attr:`rlhf_lab.tasks.base.Task.parsers`)."""
