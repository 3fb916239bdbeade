"""data.format 'humaneval': the entry point's docstring is the reference, the function without
it (signature + canonical solution) the code, the rest of the prompt the setup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import DataConfig, TaskConfig
from rlhf_lab.data.sources import resolve_format
from rlhf_lab.data.validate import BAD_CODE, MISSING_FIELD, Origin, RowError
from rlhf_lab.io import read_jsonl
from rlhf_lab.tasks import docstring as ds
from rlhf_lab.tasks.docstring.formats import parse_humaneval

ORIGIN = Origin("he.jsonl", 1, "he")

ADD = {
    "task_id": "HumanEval/0",
    "prompt": (
        "from typing import List\n\n\ndef add(xs: List[int], k: int) -> List[int]:\n"
        '    """Add k to every item of xs.\n    >>> add([1, 2], 1)\n    [2, 3]\n    """\n'
    ),
    "canonical_solution": "    return [x + k for x in xs]\n",
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate([1], 1) == [2]\n",
}
# HumanEval/10's shape: a helper function with its own docstring before the entry point
HELPER = {
    "task_id": "HumanEval/10",
    "prompt": (
        "def is_pal(s: str) -> bool:\n"
        '    """ Test if given string is a palindrome """\n'
        "    return s == s[::-1]\n\n\n"
        "def shortest(s: str) -> str:\n"
        '    """Shortest palindrome that begins with s.\n'
        "    >>> shortest('cat')\n    'catac'\n    \"\"\"\n"
    ),
    "canonical_solution": (
        "    i = 0\n    while not is_pal(s[i:]):\n        i += 1\n    return s + s[:i][::-1]\n"
    ),
    "entry_point": "shortest",
}


def test_docstring_is_the_reference_and_the_function_without_it_the_code():
    [ex] = parse_humaneval(ADD, ORIGIN, max_turns=3)
    assert ex.id == "humaneval-HumanEval-0"
    assert ex.reference == "Add k to every item of xs.\n>>> add([1, 2], 1)\n[2, 3]"
    assert ex.meta["code"] == (
        "def add(xs: List[int], k: int) -> List[int]:\n    return [x + k for x in xs]"
    )
    assert ex.meta["setup"] == "from typing import List"
    assert ex.meta["code"] in ex.prompt[0]["content"] and '"""' not in ex.prompt[0]["content"]
    facts = ds.analyze_function(ex.meta["code"])
    assert (facts.name, facts.params, facts.returns_value) == ("add", ("xs", "k"), True)


def test_a_docstring_after_an_import_is_still_the_docstring():
    # HumanEval/115's shape
    row = {**ADD, "prompt": ADD["prompt"].replace('    """Add', '    import math\n    """Add')}
    [ex] = parse_humaneval(row, ORIGIN, max_turns=3)
    assert ex.reference.startswith("Add k to every item of xs.")
    assert ex.meta["code"].splitlines()[1:] == ["    import math", "    return [x + k for x in xs]"]


def test_helpers_go_to_setup_and_the_entry_point_is_the_code():
    [ex] = parse_humaneval(HELPER, ORIGIN, max_turns=3)
    assert ex.meta["code"].startswith("def shortest(s: str) -> str:\n    i = 0")
    assert ex.meta["setup"].startswith("def is_pal(s: str) -> bool:")
    assert ds.analyze_function(ex.meta["code"]).control_flow == ("while",)


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"entry_point": "nope"}, BAD_CODE, "entry_point"),
        ({"canonical_solution": "    return [x +\n"}, BAD_CODE, "canonical_solution"),
        ({"prompt": "def add(xs, k):\n"}, BAD_CODE, "prompt"),  # no docstring
        ({"canonical_solution": None}, MISSING_FIELD, "canonical_solution"),
    ],
)
def test_bad_problems_name_their_reason(change, reason, field):
    with pytest.raises(RowError) as err:
        parse_humaneval({**ADD, **change}, ORIGIN, max_turns=3)
    assert (err.value.reason, err.value.field) == (reason, field)


def test_auto_format():
    cfg = DataConfig(source="problems.jsonl")
    assert resolve_format(cfg, TaskConfig(name="docstring"), ADD) == "humaneval"


def test_e2e_prepare_preference_on_humaneval(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models.materialise_policy(
        str(tiny_models["policy"]), tmp_path / "models/base/policy", "float32", None
    )
    rows = [{**ADD, "task_id": f"HumanEval/{i}", "entry_point": "add"} for i in range(6)]
    rows = [
        {**r, "canonical_solution": f"    return [x + k + {i} for x in xs]\n"}
        for i, r in enumerate(rows)
    ]
    rows += [HELPER, {**ADD, "task_id": "HumanEval/99", "entry_point": "missing"}]
    Path("he.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {
        "source": "he.jsonl",
        "sample_max_new_tokens": 3,
        "sample_batch_size": 8,
        "unfinished_samples": "keep",
    }
    params = {"data": data, "task": {"name": "docstring"}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["prepare_preference", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("metrics/full/prepare_preference.json").read_text())
    assert metrics["data/format"] == "humaneval" and metrics["invalid/bad_code"] == 1
    prompts = [r for s in ("train", "valid", "test") for r in read_jsonl(f"data/prompts/{s}.jsonl")]
    assert len(prompts) == 7 and all(">>>" in r["reference"] for r in prompts)
    [bad] = read_jsonl("data/invalid/he.jsonl")
    assert (bad["reason"], bad["field"], bad["line"]) == (BAD_CODE, "entry_point", 8)


def test_e2e_analyze_rewards_shows_the_doctest_gap(tmp_path, monkeypatch):
    """Through the real CLI: reference docstrings' examples pass, the bad variants have none."""
    monkeypatch.chdir(tmp_path)
    rows = [
        {
            **ADD,
            "task_id": f"HumanEval/{i}",
            "prompt": ADD["prompt"].replace("every item", f"each of the {i + 2} items"),
        }
        for i in range(4)
    ]
    Path("he.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path("params.yaml").write_text("task:\n  name: docstring\n")
    args = ["analyze_rewards", "--task", "docstring", "--input", "he.jsonl"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = json.loads(Path("metrics/analyze_rewards.json").read_text())
    assert m["analyze/rows"] == 4
    assert m["analyze/good/docstring/doctest"] == 1.0
    # empty, generic, name-only, wrong-params, other-function: no example calls add -> 0;
    # params_renamed keeps the reference's examples (they name no parameter) -> 1
    assert m["analyze/gap_by_kind/empty"] > 0 and m["analyze/gap/docstring/doctest"] > 0.5


def test_doctest_pass_rate_on_humaneval_rows():
    # A HumanEval problem carries examples; its setup (the typing import, a helper) runs first.
    rows = []
    for problem in (ADD, HELPER):
        [ex] = parse_humaneval(problem, ORIGIN, max_turns=3)
        rows.append({"reference": ex.reference, "meta": ex.meta})
    assert all(ds.carries_examples(r) for r in rows)
    replies = [
        "Add k to each item.\n\n>>> add([0], 2)\n[2]\n>>> add([], 5)\n[1]",  # 1 of 2 passes
        "Shortest palindrome starting with s.\n\n>>> shortest('ab')\n'aba'",  # needs is_pal
    ]
    got = ds.reply_metrics(replies, rows)
    assert got == {"doctest/replies": 2, "doctest/with_example": 1.0, "doctest/pass_rate": 2 / 3}
    # the references' own examples pass: the reference rate is 1
    refs = ds.reply_metrics([r["reference"] for r in rows], rows)
    assert refs["doctest/pass_rate"] == 1.0
