"""Deliberately bad docstrings for the docstring task's discrimination check (``analyze_rewards``).

A reward PPO optimises must rank the human docstring above these for the same function
(:mod:`rlhf_lab.evaluation.reward_check`); each kind is made from the function's
:class:`~rlhf_lab.tasks.docstring.analysis.FunctionFacts` or from the reference on purpose.
"""

from __future__ import annotations

import re

from rlhf_lab.tasks.docstring.analysis import FunctionFacts, analyze_function

GENERIC_DOCSTRING = "Does something."
"""The generic one-liner of the discrimination check: true of every function, says nothing."""

_DECOYS = ("foo", "bar", "baz", "qux", "spam", "eggs")


def _decoys(facts: FunctionFacts) -> list[str]:
    """Parameter-like words that are not parameters of the function (one per parameter)."""
    taken = {p.lower() for p in facts.params}
    decoys = [w for w in _DECOYS if w not in taken]
    return decoys[: max(1, len(facts.params))] if decoys else ["thing"]


def _rename_params(reference: str, facts: FunctionFacts) -> str:
    """``reference`` with every parameter it names replaced by a decoy word."""
    text = reference
    for param, decoy in zip(facts.params, _decoys(facts) * len(facts.params), strict=False):
        spaced = param.strip("_").replace("_", " ")
        for word in dict.fromkeys((param, spaced)):
            if word:
                pattern = r"(?<![A-Za-z0-9_])" + re.escape(word) + r"(?![A-Za-z0-9_])"
                text = re.sub(pattern, decoy, text, flags=re.IGNORECASE)
    return text


def bad_docstring_variants(
    code: str, reference: str | None = None, other_reference: str | None = None
) -> dict[str, str]:
    """Deliberately bad docstrings for ``code``'s function, by kind, for the discrimination check.

    ``empty``; ``generic`` (:data:`GENERIC_DOCSTRING`); ``name_only`` (the function's name);
    ``wrong_params`` ("Takes foo and bar.": made-up parameter names); ``params_renamed``
    (``reference`` with the parameters it names swapped for made-up ones: a near-miss that
    BLEU alone would still like; only when the reference names a parameter);
    ``other_function`` (``other_reference``, another function's docstring; when given).
    """
    facts = analyze_function(code)
    out = {
        "empty": "",
        "generic": GENERIC_DOCSTRING,
        "name_only": facts.name or "function",
        "wrong_params": f"Takes {' and '.join(_decoys(facts))}.",
    }
    if reference:
        renamed = _rename_params(reference, facts)
        if renamed != reference:
            out["params_renamed"] = renamed
    if other_reference is not None and other_reference.strip() != (reference or "").strip():
        out["other_function"] = other_reference
    return out


def bad_docstrings(code: str) -> list[str]:
    """The reference-free :func:`bad_docstring_variants` of ``code`` (empty, generic, ...)."""
    return list(bad_docstring_variants(code).values())
