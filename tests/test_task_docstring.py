"""Docstring task: static facts from ``ast``, each reward component, and discrimination."""

from __future__ import annotations

import statistics

import pytest

from rlhf_lab import reward_components
from rlhf_lab.config import Params
from rlhf_lab.tasks import docstring as ds

CLAMP = """
def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value
"""

SAVE = """
def save(path, data, *, overwrite=False):
    with open(path, "w") as f:
        f.write(data)
"""

METHOD = """
class Stack:
    def push(self, item):
        self._items.append(item)

    def pop(self):
        return self._items.pop()
"""

PARSE_INT = """
def parse_int(text, base=10):
    try:
        return int(text, base)
    except ValueError:
        raise ConfigError(f"not an integer: {text}")
"""

BROKEN = "def f(x:\n    return x +"
PY2 = "def f(x):\n    print x\n    return x"


def _row(code, reference=None):
    return {"id": "f", "prompt": [], "reference": reference, "meta": {"code": code}}


def test_analyze_function_facts():
    f = ds.analyze_function(CLAMP)
    assert (f.name, f.params, f.returns_value, f.raises) == (
        "clamp",
        ("value", "low", "high"),
        True,
        (),
    )
    assert f.control_flow == ("if",) and f.parse_ok
    s = ds.analyze_function(SAVE)
    assert s.params == ("path", "data", "overwrite") and not s.returns_value
    p = ds.analyze_function(PARSE_INT)
    assert p.raises == ("ConfigError",) and p.control_flow == ("try",)


def test_method_with_self_is_first_method():
    f = ds.analyze_function(METHOD)
    assert f.name == "push" and f.params == ("item",) and not f.returns_value


def test_nested_scopes_and_generators():
    code = """
def outer(xs):
    def inner(y):
        if y:
            raise KeyError(y)
        return y
    for x in xs:
        yield inner(x)
"""
    f = ds.analyze_function(code)
    assert f.returns_value and f.raises == () and f.control_flow == ("for",)
    bare = "def g():\n    try:\n        h()\n    except (OSError, mod.Timeout):\n        raise\n"
    assert ds.analyze_function(bare).raises == ("OSError", "Timeout")


@pytest.mark.parametrize("code", [BROKEN, PY2, "x = 1", ""])
def test_unparseable_code_scores_zero_and_never_raises(code):
    facts = ds.analyze_function(code)
    assert not facts.parse_ok
    doc = "Return x if it is positive, raise an error otherwise."
    assert ds.param_coverage(doc, facts) == 0.0
    assert ds.return_mention(doc, facts) == 0.0
    assert ds.raises_mention(doc, facts) == 0.0
    assert ds.control_flow(doc, facts) == 0.0
    total, comps = ds.docstring_reward(doc, _row(code, "Return x."))
    assert comps["length"] == 1.0 and comps["bleu"] > 0 and 0 < total < 1


def test_param_coverage():
    f = ds.analyze_function(SAVE)
    assert ds.param_coverage("Write data to path.", f) == pytest.approx(2 / 3)
    assert ds.param_coverage("Write DATA to PATH unless overwrite.", f) == 1.0
    assert ds.param_coverage("Write the database to a filepath.", f) == 0.0  # whole words only
    nothing = ds.analyze_function("def now():\n    return 1\n")
    # no parameters: nothing to check, so the docstring's substance decides (see below)
    assert ds.param_coverage("The time now.", nothing) == 1.0
    assert ds.param_coverage("Current time.", nothing) == pytest.approx(1 / 3)
    snake = ds.analyze_function("def f(backing_file):\n    pass\n")
    assert ds.param_coverage("Uses the backing file.", snake) == 1.0


def test_return_mention():
    returns = ds.analyze_function(CLAMP)
    assert ds.return_mention("Returns value limited to [low, high].", returns) == 1.0
    assert ds.return_mention("-> the clamped value", returns) == 1.0
    assert ds.return_mention("Clamp value between low and high.", returns) == 0.0
    silent = ds.analyze_function(SAVE)
    assert ds.return_mention("Write data to path.", silent) == 1.0
    assert ds.return_mention("Write data. Returns:\n    None", silent) == 1.0
    assert ds.return_mention("Write data and return the byte count.", silent) == 0.0
    stub = ds.analyze_function("def area(self):\n    raise NotImplementedError\n")
    assert ds.return_mention("Return the area.", stub) == 1.0


def test_raises_mention():
    raising = ds.analyze_function(PARSE_INT)
    assert ds.raises_mention("Parse text; raises if it is not a number.", raising) == 1.0
    assert ds.raises_mention("Parse text (ConfigError on bad input).", raising) == 1.0
    assert ds.raises_mention("Parse text as an integer.", raising) == 0.0
    assert ds.raises_mention("Clamp value to low..high.", ds.analyze_function(CLAMP)) == 1.0


def test_control_flow():
    both = ds.analyze_function(
        "def f(xs):\n    for x in xs:\n        if x:\n            return x\n    return None\n"
    )
    assert ds.control_flow("First truthy item of xs.", both) == 0.0
    assert ds.control_flow("Check each item of xs.", both) == 0.5
    assert ds.control_flow("Iterate over xs and return x when it is truthy.", both) == 1.0
    loop = ds.analyze_function("def f():\n    while busy():\n        pass\n")
    assert ds.control_flow("Wait until not busy.", loop) == 1.0
    assert ds.control_flow("Write data to path.", ds.analyze_function(SAVE)) == 1.0


TRIVIAL = "def reset(self):\n    self.counter = 0\n"


@pytest.mark.parametrize(
    ("doc", "score"),
    [
        ("", 0.0),
        ("Does something.", 1 / 3),  # 2 words (length 2/3), names nothing of the code: halved
        ("reset", 1 / 3),  # names the function, but one word
        ("Something happens here, trust me.", 0.5),  # long enough, names nothing
        ("Reset the counter to zero.", 1.0),
    ],
)
def test_rules_with_nothing_to_check_do_not_reward_empty_or_generic_docstrings(doc, score):
    facts = ds.analyze_function(TRIVIAL)
    assert facts.words == ("reset", "counter")
    for rule in (ds.param_coverage, ds.return_mention, ds.raises_mention, ds.control_flow):
        assert rule(doc, facts) == pytest.approx(score), rule.__name__
    # the rule total (default weights without BLEU) of an empty docstring was 0.87, now 0
    rules = {n: w for n, w in ds.DEFAULT_WEIGHTS.items() if n != "bleu"}
    assert ds.docstring_reward("", _row(TRIVIAL), rules)[0] == 0.0
    stub = ds.analyze_function("def area(self):\n    raise NotImplementedError\n")
    assert ds.return_mention("", stub) == 0.0 and ds.return_mention("Area of it.", stub) == 1.0


def test_length_band():
    assert ds.length_score("") == 0.0
    assert ds.length_score("Two words") == pytest.approx(2 / ds.LENGTH_MIN_WORDS)
    assert ds.length_score("word " * ds.LENGTH_MIN_WORDS) == 1.0
    assert ds.length_score("word " * ds.LENGTH_MAX_WORDS) == 1.0
    mid = (ds.LENGTH_MAX_WORDS + ds.LENGTH_ZERO_WORDS) // 2
    assert ds.length_score("word " * mid) == pytest.approx(0.5, abs=0.02)
    assert ds.length_score("word " * (ds.LENGTH_ZERO_WORDS + 10)) == 0.0


def test_bleu():
    ref = "Clamp value to the range from low to high."
    assert ds.bleu_score(ref, ref) == pytest.approx(1.0)
    assert 0.0 < ds.bleu_score("Clamp value to the range.", ref) < 1.0
    assert ds.bleu_score("anything", None) == 0.0
    assert ds.bleu_score("", ref) == 0.0


def test_clean_docstring_strips_wrappers():
    assert ds.clean_docstring('"""Return x."""') == "Return x."
    assert ds.clean_docstring("```\nReturn x.\n```") == "Return x."
    echoed = 'def f(a, b):\n    """Add numbers."""\n    return a + b\n'
    assert ds.clean_docstring(echoed) == "Add numbers."
    assert ds.clean_docstring("@param a: first") == "@param a: first"


def test_docstring_reward_weights_and_registry():
    row = _row(CLAMP, "Clamp value to the range from low to high.")
    good = "Return value clamped to the range from low to high, if it lies outside."
    total, comps = ds.docstring_reward(good, row, {"param_coverage": 1, "docstring/length": 3})
    assert set(comps) == {"param_coverage", "length"} and total == pytest.approx(1.0)
    total, comps = ds.docstring_reward("Clamp.", row, {"param_coverage": 1, "length": 1})
    assert total == pytest.approx(0.5 * 0.0 + 0.5 * (1 / 3))
    with pytest.raises(ValueError, match="unknown"):
        ds.docstring_reward(good, row, {"rouge": 1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        ds.docstring_reward(good, row, {"bleu": 0.0})
    every = ds.score_components(good, row)
    for name in ds.COMPONENTS:
        fn = reward_components.build([f"docstring/{name}"], Params())[f"docstring/{name}"]
        assert fn([good], [row]) == [every[name]]


# (code, a good docstring) — the discrimination check.
GOOD_CASES = [
    (CLAMP, "Return value limited to the range [low, high]: low if it is below, high if above."),
    (SAVE, "Write data to the file at path, replacing it when overwrite is set."),
    (METHOD, "Push item onto the top of the stack."),
    (PARSE_INT, "Return text parsed as an integer in base; raises ConfigError on failure."),
    (
        "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
        "    return total / len(xs)\n",
        "Return the arithmetic mean of xs, summing over each element.",
    ),
    (
        "def retry(fn, attempts=3):\n    while attempts:\n        try:\n            return fn()\n"
        "        except OSError:\n            attempts -= 1\n    raise TimeoutError()\n",
        "Call fn, retrying until it succeeds or attempts run out; on each OSError try again. "
        "Returns its result, raises TimeoutError when every attempt fails.",
    ),
    (
        "def find_user(users, name, default=None):\n    for user in users:\n"
        "        if user.name == name:\n            return user\n    return default\n",
        "Return the first of users whose name matches, iterating over all of them; "
        "default if none matches.",
    ),
    (
        "def check_positive(number):\n    if number <= 0:\n"
        "        raise ValueError('must be positive')\n",
        "Check that number is positive, raising ValueError if it is not.",
    ),
]


def test_good_docstrings_beat_bad_ones():
    # no reference needed; no >>> examples in these docstrings
    weights = {n: 1.0 for n in ds.COMPONENTS if n not in ("bleu", "doctest")}
    good, bad = [], []
    for code, doc in GOOD_CASES:
        row = _row(code)
        good.append(ds.docstring_reward(doc, row, weights)[0])
        bads = ds.bad_docstrings(code)
        assert len(bads) >= 4
        bad.extend(ds.docstring_reward(b, row, weights)[0] for b in bads)
    assert min(good) > 0.9
    assert statistics.mean(good) - statistics.mean(bad) > 0.2


# ---------------------------------------------------------------- doctest pass rate


def test_doctest_accounting_by_hand():
    # 4 replies: two without an example that calls the function, one with 2 of 3 examples
    # passing, one with its only example failing -> 2/4 write examples, 2 of 4 examples pass
    got = ds.doctest_accounting([None, (2, 3), None, (0, 1)])
    assert got == {"doctest/replies": 4.0, "doctest/with_example": 0.5, "doctest/pass_rate": 0.5}
    # no reply has an example: no pass rate to report (not 0, not 1)
    assert ds.doctest_accounting([None, None]) == {
        "doctest/replies": 2.0,
        "doctest/with_example": 0.0,
    }
    assert ds.doctest_accounting([]) == {}


ADD = "def add(a, b):\n    return a + b\n"


def test_reply_metrics_on_replies_with_and_without_examples():
    carries = {"meta": {"code": ADD}, "reference": "Add.\n\n>>> add(1, 2)\n3\n"}
    plain = {"meta": {"code": ADD}, "reference": "Add two numbers."}
    assert ds.carries_examples(carries) and not ds.carries_examples(plain)
    replies = [
        "Sum a and b.\n\n>>> add(1, 2)\n3\n>>> add(2, 2)\n5\n",  # 1 of 2 examples passes
        '"""Sum.\n\n>>> add(0, 0)\n0\n"""',  # passes (quotes stripped as for the reward)
        "Sum a and b.",  # no example
        "Sum.\n\n>>> 1 + 1\n2\n",  # an example that never calls add: no evidence
        "Sum.\n\n>>> add(1, 1)\n2\n",  # on a row without examples: not counted
    ]
    rows = [carries, carries, carries, carries, plain]
    got = ds.reply_metrics(replies, rows)
    assert got == {
        "doctest/replies": 4.0,
        "doctest/with_example": 0.5,
        "doctest/pass_rate": pytest.approx(2 / 3),
    }
    assert ds.doctest_counts(ds.clean_docstring(replies[0]), carries) == (1, 2)
    assert ds.doctest_score(ds.clean_docstring(replies[0]), carries) == 0.5


@pytest.mark.shared_data
def test_functions_that_carry_examples_in_the_shared_corpus(shared_data):
    import gzip
    import json

    from rlhf_lab.data.validate import RowError
    from rlhf_lab.tasks.docstring.formats import strip_docstring

    rows = []
    with gzip.open(shared_data / "docstring/valid.jsonl.gz", "rt") as fh:
        for line in fh:
            raw = json.loads(line)
            try:
                code = strip_docstring(raw["code"])
            except RowError:
                continue
            rows.append({"meta": {"code": code}, "reference": raw["docstring"]})
    carrying = [r for r in rows if ds.carries_examples(r)]
    assert len(rows) == 2000 and len(carrying) == 84  # docs/docstring.md quotes this count
    got = ds.reply_metrics([r["reference"] for r in carrying[:4]], carrying[:4])
    assert got["doctest/replies"] == 4 and got["doctest/with_example"] == 1.0
