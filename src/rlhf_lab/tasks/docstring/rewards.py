"""Docstring generation: static-analysis rewards computed from the function's ``ast``.

The prompt row holds the function source in ``row["meta"]["code"]`` and the human docstring
in ``row["reference"]``. The code is parsed with :mod:`ast`; only ``doctest`` executes it, and
never in this process. :func:`~rlhf_lab.tasks.docstring.analysis.analyze_function` extracts the
facts a good docstring should reflect (parameters, whether a value is returned, what is raised,
which control flow is used) and each component checks the reply against one fact, giving a
score in [0, 1]:

=================== ===========================================================================
``param_coverage``  fraction of parameters (a leading ``self``/``cls`` excluded) the docstring
                    names as a whole word, case-insensitive, ``max_len`` also as "max len";
                    *nothing to check* when there are none
``return_mention``  value returned (``return <expr>`` other than ``None``, or a generator):
                    1 if the docstring uses a return word (return/returns/yield(s)/"->"/
                    ``:rtype``/generator), else 0. Nothing returned: 1 unless the docstring
                    claims a return value — a return word not followed by "None"/"nothing".
                    A stub body (``pass``, ``...``, ``raise NotImplementedError``) describes a
                    contract that the code does not show: *nothing to check*; nothing returned
                    and no claim: *nothing to check*
``raises_mention``  body raises: 1 if the docstring says raise/throw/error/exception (any word
                    ending in "error"/"exception" included) or names a raised class, else 0;
                    *nothing to check* when nothing is raised
``control_flow``    fraction of the control-flow kinds present (if/match, for, while, try) that
                    the docstring describes through the kind's keyword family
                    (:data:`CONTROL_FLOW_WORDS`); *nothing to check* when there is none
``length``          1 for :data:`LENGTH_MIN_WORDS`..:data:`LENGTH_MAX_WORDS` words, linear to 0
                    at 0 words and at :data:`LENGTH_ZERO_WORDS`
``bleu``            sentence BLEU-4 (sacrebleu, ``exp`` smoothing) to the reference / 100; 0
                    without a reference
``doctest``         the docstring's ``>>>`` examples run against the function (``meta.setup``,
                    e.g. HumanEval's imports, first) in a confined child process
                    (:mod:`rlhf_lab.tasks.sandbox`): the fraction that pass. 0 when no
                    example uses the function: no evidence, no credit (a neutral 0.5 would
                    hand an empty docstring half the component, the "nothing to check" bug).
                    Not in :data:`DEFAULT_WEIGHTS` nor any preset (README)
=================== ===========================================================================

*Nothing to check* (:func:`nothing_to_check`): a rule with no fact to check must not reward
an empty or generic docstring, so it scores the docstring's length score, halved when the
docstring uses no word of the code (the function's name parts, parameters, names in its body).

Code that does not parse (the Python 2 part of the Barone & Sennrich corpus, truncated code)
gets ``parse_ok=False`` and 0.0 on the four code-based components: with no facts there is no
evidence the reply is right, and a constant 1.0 would reward any text on those rows. Only
statements of the function itself count: a ``return`` or ``raise`` inside a nested ``def`` or
``class`` belongs to that inner scope, and comprehensions / ``x if c else y`` are expressions,
not control flow a docstring is expected to narrate.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence

import sacrebleu

from rlhf_lab.data.rows import Row
from rlhf_lab.tasks import sandbox
from rlhf_lab.tasks.docstring.analysis import (
    PARSE_ERRORS,
    FunctionFacts,
    analyze_function,
    first_function,
)

LENGTH_MIN_WORDS = 3
"""Shortest docstring (in whitespace-separated words) with full length score."""
LENGTH_MAX_WORDS = 80
"""Longest docstring with full length score."""
LENGTH_ZERO_WORDS = 160
"""Length at which the score has fallen linearly to 0 above the band."""

COMPONENTS = (
    "param_coverage",
    "return_mention",
    "raises_mention",
    "control_flow",
    "length",
    "bleu",
    "doctest",
)
"""Component names; each is the reward component ``docstring/<name>`` (reward_components)."""

DEFAULT_WEIGHTS: dict[str, float] = {
    "param_coverage": 0.3,
    "return_mention": 0.15,
    "raises_mention": 0.1,
    "control_flow": 0.1,
    "length": 0.1,
    "bleu": 0.25,
}
"""Weights used by :func:`docstring_reward` when none are given."""

PHASE1_GATES: dict[str, float] = {
    "min_reward_gain": 0.10,
    "min_bleu_gain": 0.02,
    "max_kl_per_token": 0.02,
    "adjust_reward_gain": 0.05,
    "reconsider_kl_per_token": 0.05,
}
"""The Phase-1 protocol's decision thresholds, the task's ``eval.gates.protocol`` defaults:
proceed if the mean rule reward rose by >= 0.10, BLEU-4 by >= 0.02 and the mean KL per token
stayed < 0.02; adjust if the reward rose by < 0.05 or KL > 0.02; reconsider if the reward or
BLEU-4 fell or KL > 0.05 (:class:`rlhf_lab.config.ProtocolGates`)."""

CONTROL_FLOW_WORDS: dict[str, tuple[str, ...]] = {
    "if": (
        r"if",
        r"when",
        r"whenever",
        r"unless",
        r"otherwise",
        r"else",
        r"whether",
        r"depending",
        r"conditionally",
        r"in case",
    ),
    "for": (
        r"each",
        r"every",
        r"all",
        r"iterat\w*",
        r"loop\w*",
        r"over",
        r"through",
    ),
    "while": (
        r"until",
        r"while",
        r"repeat\w*",
        r"loop\w*",
        r"as long as",
        r"retr(?:y|ies|ied|ying)",
        r"poll\w*",
    ),
    "try": (
        r"try",
        r"tries",
        r"trying",
        r"attempt\w*",
        r"fail\w*",
        r"\w*errors?",
        r"\w*exceptions?",
        r"catch\w*",
        r"caught",
    ),
}
"""Keyword families (regexes matched as whole words, case-insensitive) per control-flow kind."""

_RETURN_WORDS = re.compile(
    r"\b(returns?|returned|returning|yields?|yielded|yielding|generators?|rtype)\b"
    r"|->",
    re.IGNORECASE,
)
_NO_VALUE = re.compile(r"[\s:*`]*(none|nothing|anything|null|no\s+value)\b", re.IGNORECASE)
_RAISE_WORDS = re.compile(
    r"\b(raises?|raised|raising|throws?|thrown|throwing|\w*errors?|\w*exceptions?)\b",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_CONTROL_RES = {
    kind: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)
    for kind, words in CONTROL_FLOW_WORDS.items()
}


def clean_docstring(reply: str) -> str:
    """The docstring text of a reply: code fences and surrounding triple quotes removed.

    A reply that is a whole ``def`` gives that function's docstring ("" if it has none), so
    a policy cannot collect parameter coverage by echoing the signature.
    """
    text = reply.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    if re.match(r"(async\s+)?def\s|@", text):
        try:
            func = first_function(ast.parse(text))
        except PARSE_ERRORS:
            func = None
        if func is not None:
            return (ast.get_docstring(func) or "").strip()
    for quote in ('"""', "'''"):
        if text.startswith(quote):
            text = text[3:]
            if text.endswith(quote):
                text = text[:-3]
            break
    return text.strip()


def _mentions_word(doc: str, word: str) -> bool:
    pattern = r"(?<![A-Za-z0-9_])" + re.escape(word) + r"(?![A-Za-z0-9_])"
    return re.search(pattern, doc, re.IGNORECASE) is not None


def names_code(doc: str, facts: FunctionFacts) -> bool:
    """Does the docstring use a word of the code (:attr:`FunctionFacts.words`; as a word's
    start, so "clamped" names ``clamp``)?"""
    return any(
        re.search(r"(?<![A-Za-z0-9_])" + re.escape(w), doc, re.IGNORECASE) for w in facts.words
    )


def nothing_to_check(doc: str, facts: FunctionFacts) -> float:
    """The score of a rule that has nothing to check in this function (no parameters, nothing
    returned, raised or branched on): the docstring's :func:`length_score`, halved when it
    names nothing of the code. So an empty docstring gets 0 and a generic one ("Does
    something.") at most 1/3, where a constant 1 used to give an empty docstring on a trivial
    function 0.87 of the rule total."""
    return length_score(doc) * (1.0 if names_code(doc, facts) else 0.5)


def param_coverage(doc: str, facts: FunctionFacts) -> float:
    """Fraction of parameters the docstring names (see module docstring)."""
    if not facts.parse_ok:
        return 0.0
    if not facts.params:
        return nothing_to_check(doc, facts)
    named = 0
    for p in facts.params:
        spaced = p.strip("_").replace("_", " ")
        if _mentions_word(doc, p) or (spaced and spaced != p and _mentions_word(doc, spaced)):
            named += 1
    return named / len(facts.params)


def _claims_return(doc: str) -> bool:
    # "Returns None" / "returns nothing" is not a claim of a value.
    return any(not _NO_VALUE.match(doc, m.end()) for m in _RETURN_WORDS.finditer(doc))


def return_mention(doc: str, facts: FunctionFacts) -> float:
    """Does the docstring's return statement agree with the code? (module docstring)"""
    if not facts.parse_ok:
        return 0.0
    if facts.is_stub:
        return nothing_to_check(doc, facts)
    if facts.returns_value:
        return 1.0 if _RETURN_WORDS.search(doc) else 0.0
    return 0.0 if _claims_return(doc) else nothing_to_check(doc, facts)


def raises_mention(doc: str, facts: FunctionFacts) -> float:
    """Does the docstring mention the exceptions the body raises? (module docstring)"""
    if not facts.parse_ok:
        return 0.0
    if not facts.raises:
        return nothing_to_check(doc, facts)
    if _RAISE_WORDS.search(doc) or any(_mentions_word(doc, name) for name in facts.raises):
        return 1.0
    return 0.0


def control_flow(doc: str, facts: FunctionFacts) -> float:
    """Fraction of the function's control-flow kinds the docstring describes."""
    if not facts.parse_ok:
        return 0.0
    if not facts.control_flow:
        return nothing_to_check(doc, facts)
    described = sum(1 for kind in facts.control_flow if _CONTROL_RES[kind].search(doc))
    return described / len(facts.control_flow)


def length_score(doc: str) -> float:
    """1 inside the word band, linear to 0 at 0 words and at :data:`LENGTH_ZERO_WORDS`."""
    n = len(doc.split())
    if n < LENGTH_MIN_WORDS:
        return n / LENGTH_MIN_WORDS
    if n <= LENGTH_MAX_WORDS:
        return 1.0
    return max(0.0, 1.0 - (n - LENGTH_MAX_WORDS) / (LENGTH_ZERO_WORDS - LENGTH_MAX_WORDS))


def bleu_score(doc: str, reference: str | None) -> float:
    """Sentence BLEU-4 to ``reference`` in [0, 1] (sacrebleu, ``exp`` smoothing)."""
    if not reference or not reference.strip() or not doc.strip():
        return 0.0
    bleu = sacrebleu.sentence_bleu(doc, [reference], smooth_method="exp")
    return min(1.0, max(0.0, bleu.score / 100.0))


def _row_code(row: Row, key: str = "code") -> str:
    code = (row.get("meta") or {}).get(key)
    return code if isinstance(code, str) else ""


@functools.lru_cache(maxsize=1024)
def _run_doctests(doc: str, code: str, name: str, setup: str) -> sandbox.DoctestResult | None:
    # Cached: evaluate runs the same reply's examples for the docstring/doctest component and
    # for the pass-rate accounting (doctest_counts); one child process is enough.
    return sandbox.run_doctests(doc, code, name=name, setup=setup)


def doctest_counts(doc: str, row: Row) -> tuple[int, int] | None:
    """``(passed, total)`` examples of ``doc`` run against the row's function in the sandbox
    (:func:`rlhf_lab.tasks.sandbox.run_doctests`); None when no example calls the function
    (or its code does not parse). A child that gave no result (timeout, a limit) counts every
    example of ``doc`` as failed."""
    code = textwrap.dedent(_row_code(row))
    facts = analyze_function(code)
    if not facts.parse_ok:
        return None
    result = _run_doctests(doc, code, facts.name, _row_code(row, "setup"))
    if result is None:
        return None
    return result.passed, result.total or len(sandbox.examples(doc))


def doctest_score(doc: str, row: Row) -> float:
    """Fraction of ``doc``'s examples that pass against the row's function (module docstring)."""
    counts = doctest_counts(doc, row)
    return 0.0 if counts is None or counts[1] == 0 else counts[0] / counts[1]


def carries_examples(row: Row) -> bool:
    """Does the row's function come with examples: a reference docstring with a ``>>>`` example
    that calls it (every HumanEval problem; 84 of the 2000 Barone & Sennrich validation
    functions)?"""
    ref = row.get("reference")
    facts = analyze_function(_row_code(row))
    return bool(facts.parse_ok and isinstance(ref, str) and sandbox.calls_function(ref, facts.name))


def doctest_accounting(counts: Sequence[tuple[int, int] | None]) -> dict[str, float]:
    """Doctest pass rate of a set of replies from their :func:`doctest_counts`.

    ``doctest/with_example``: fraction of replies with at least one example that calls the
    function; ``doctest/pass_rate``: fraction of those replies' examples that pass (pooled over
    examples; absent when no reply has one); ``doctest/replies``: how many replies. Empty for
    no replies.
    """
    if not counts:
        return {}
    with_ex = [c for c in counts if c is not None]
    out: dict[str, float] = {
        "doctest/replies": len(counts),
        "doctest/with_example": len(with_ex) / len(counts),
    }
    total = sum(t for _, t in with_ex)
    if total:
        out["doctest/pass_rate"] = sum(p for p, _ in with_ex) / total
    return out


def reply_metrics(replies: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
    """The task's evaluate metrics of one model's replies: :func:`doctest_accounting` on the
    functions that carry examples (:func:`carries_examples`): does the model write examples
    for them, and do its examples pass? The one signal here that no model judged."""
    pairs = [(r, row) for r, row in zip(replies, rows, strict=True) if carries_examples(row)]
    return doctest_accounting([doctest_counts(clean_docstring(r), row) for r, row in pairs])


def score_components(reply: str, row: Row, names: Sequence[str] = COMPONENTS) -> dict[str, float]:
    """The named components (short names) for one reply to one row."""
    doc = clean_docstring(reply)
    facts = analyze_function(_row_code(row))
    fns = {
        "param_coverage": lambda: param_coverage(doc, facts),
        "return_mention": lambda: return_mention(doc, facts),
        "raises_mention": lambda: raises_mention(doc, facts),
        "control_flow": lambda: control_flow(doc, facts),
        "length": lambda: length_score(doc),
        "bleu": lambda: bleu_score(doc, row.get("reference")),
        "doctest": lambda: doctest_score(doc, row),
    }
    return {name: float(fns[name]()) for name in names}


def _normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    clean: dict[str, float] = {}
    for name, w in weights.items():
        short = name.removeprefix("docstring/")
        if short not in COMPONENTS:
            raise ValueError(f"unknown docstring component {name!r}; known: {list(COMPONENTS)}")
        if w < 0:
            raise ValueError(f"docstring weight {name!r} is negative ({w})")
        clean[short] = clean.get(short, 0.0) + float(w)
    total = sum(clean.values())
    if total <= 0:
        raise ValueError("docstring weights sum to 0")
    return {name: w / total for name, w in clean.items() if w > 0}


def docstring_reward(
    reply: str, row: Row, weights: Mapping[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """Weighted sum of components (weights normalised to sum 1) and the components used.

    ``weights`` keys are component names with or without the ``docstring/`` prefix; default
    :data:`DEFAULT_WEIGHTS`.
    """
    norm = _normalise_weights(DEFAULT_WEIGHTS if weights is None else weights)
    comps = score_components(reply, row, tuple(norm))
    return sum(norm[name] * comps[name] for name in norm), comps


def component_reward(component: str) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``docstring/<component>`` reward: :func:`score_components` of that one component
    per reply (``component`` is a short name from :data:`COMPONENTS`)."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown docstring component {component!r}; known: {list(COMPONENTS)}")

    def score(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
        if len(replies) != len(rows):
            raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
        return [
            score_components(reply, row, (component,))[component]
            for reply, row in zip(replies, rows, strict=True)
        ]

    return score
