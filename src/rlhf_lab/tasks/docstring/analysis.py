"""The docstring task's facts about a function, read from its ``ast``: what a docstring should say.

:func:`analyze_function` parses the function (never runs it) and returns its
:class:`FunctionFacts`: parameters, whether a value is returned, what is raised, which control
flow is used, the words of the code. :mod:`rlhf_lab.tasks.docstring.rewards` scores a reply
against them, :mod:`rlhf_lab.tasks.docstring.variants` makes the bad replies of the
discrimination check from them, and ``rlhf-lab generate --code`` splits a file with
:func:`functions_in`. The rules (what counts as the function's own statement, which code does
not parse) are in the rewards module's docstring.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionFacts:
    """What static analysis knows about a function (all empty when ``parse_ok`` is False)."""

    name: str
    """Function name ("" when nothing parsed)."""
    params: tuple[str, ...]
    """Parameter names in order, ``*args``/``**kwargs`` as ``args``/``kwargs``, no self/cls."""
    returns_value: bool
    """A ``return`` with a value other than ``None``, or a ``yield`` (a generator)."""
    raises: tuple[str, ...]
    """Raised exception names (last dotted part; a bare re-raise gives the handler's types)."""
    control_flow: tuple[str, ...]
    """Kinds present, subset of ``("if", "for", "while", "try")`` in that order."""
    parse_ok: bool
    """The code parsed and a function was found in it."""
    is_stub: bool = False
    """The body is only ``pass``/``...``/a docstring/``raise NotImplementedError``."""
    words: tuple[str, ...] = ()
    """Words of the code a specific docstring is likely to use: parts of the function's name
    (snake_case and camelCase split), its parameters, and the names and attributes its body
    uses; at least :data:`MIN_CODE_WORD` characters, lowercase."""


_NO_FACTS = FunctionFacts("", (), False, (), (), False)

MIN_CODE_WORD = 3
"""Shortest code word (:attr:`FunctionFacts.words`) a docstring is credited for naming."""
_NOT_CODE_WORDS = frozenset({"self", "cls", "none", "true", "false", "args", "kwargs"})
_WORD_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")

PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)
"""What ``ast.parse`` raises on bad input: syntax, NUL bytes (ValueError), and nesting too deep
for the parser (RecursionError; MemoryError when its own stack overflows, e.g. 3000 lambdas)."""


def first_function(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """First top-level def, else the first method of the first class that has one."""
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs):
            return node
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, funcs):
                    return item
    return None


def functions_in(source: str) -> list[str]:
    """The source of each top-level function and of each method of a top-level class in
    ``source``, in order; ``[source]`` when it does not parse or defines none (a snippet is
    then one function as given)."""
    text = textwrap.dedent(source)
    try:
        tree = ast.parse(text)
    except PARSE_ERRORS:
        return [source]
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = []
    for node in tree.body:
        if isinstance(node, funcs):
            nodes.append(node)
        elif isinstance(node, ast.ClassDef):
            nodes.extend(item for item in node.body if isinstance(item, funcs))
    lines = text.splitlines(keepends=True)
    found = []
    for node in nodes:
        # decorators sit above the def's line: keep them, as a reader sees the function
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        found.append(textwrap.dedent("".join(lines[start - 1 : node.end_lineno])).strip("\n"))
    return found or [source]


def _own_nodes(func: ast.AST) -> list[ast.AST]:
    """Nodes of ``func``'s body, not descending into nested defs, classes or lambdas."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(func))
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, scopes):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _exc_name(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _handler_names(handler: ast.ExceptHandler) -> list[str]:
    if handler.type is None:
        return ["Exception"]
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return [n for n in (_exc_name(t) for t in types) if n]


def _raises(func: ast.AST) -> list[str]:
    names: list[str] = []
    # An explicit stack, not recursion: ast.parse accepts expressions ~3000 deep, far past
    # Python's recursion limit (a recursive walk raised RecursionError while scoring).
    stack: list[tuple[ast.AST, ast.ExceptHandler | None]] = [
        (child, None) for child in reversed(list(ast.iter_child_nodes(func)))
    ]
    while stack:
        node, handler = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Raise):
            if node.exc is None:
                found = _handler_names(handler) if handler is not None else ["Exception"]
            else:
                found = [_exc_name(node.exc) or "Exception"]
            names.extend(n for n in found if n not in names)
        inner = node if isinstance(node, ast.ExceptHandler) else handler
        # reversed: children are popped in source order, so names keep their first-seen order
        stack.extend((child, inner) for child in reversed(list(ast.iter_child_nodes(node))))
    return names


def _is_stub(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = list(func.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # docstring
    if not body:
        return True
    if len(body) != 1:
        return False
    stmt = body[0]
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return stmt.value.value is Ellipsis
    return isinstance(stmt, ast.Raise) and _exc_name(stmt.exc) == "NotImplementedError"


@functools.lru_cache(maxsize=4096)
def analyze_function(code: str) -> FunctionFacts:
    """Static facts about the first function in ``code`` (parsed, never executed).

    Never raises: code that does not parse, or has no function, gives ``parse_ok=False``.
    """
    try:
        tree = ast.parse(textwrap.dedent(code))
    except PARSE_ERRORS:
        return _NO_FACTS
    func = first_function(tree)
    if func is None:
        return _NO_FACTS
    a = func.args
    params = [p.arg for p in (*a.posonlyargs, *a.args)]
    if params and params[0] in ("self", "cls"):
        params = params[1:]
    params += [a.vararg.arg] if a.vararg else []
    params += [p.arg for p in a.kwonlyargs]
    params += [a.kwarg.arg] if a.kwarg else []

    nodes = _own_nodes(func)
    returns_value = any(
        isinstance(n, ast.Yield | ast.YieldFrom)
        or (
            isinstance(n, ast.Return)
            and n.value is not None
            and not (isinstance(n.value, ast.Constant) and n.value.value is None)
        )
        for n in nodes
    )
    kinds = {
        "if": (ast.If, ast.Match),
        "for": (ast.For, ast.AsyncFor),
        "while": (ast.While,),
        "try": (ast.Try, ast.TryStar),
    }
    control = tuple(k for k, types in kinds.items() if any(isinstance(n, types) for n in nodes))
    names = [func.name, *params]
    names += [n.id for n in nodes if isinstance(n, ast.Name)]
    names += [n.attr for n in nodes if isinstance(n, ast.Attribute)]
    words = dict.fromkeys(
        w.lower()
        for name in names
        for w in (name.strip("_"), *_WORD_PARTS.findall(name))
        if len(w) >= MIN_CODE_WORD and w.lower() not in _NOT_CODE_WORDS
    )
    return FunctionFacts(
        name=func.name,
        params=tuple(params),
        returns_value=returns_value,
        raises=tuple(_raises(func)),
        control_flow=control,
        parse_ok=True,
        is_stub=_is_stub(func),
        words=tuple(words),
    )
