"""The task registry: one Task per ``task.name``, and no branch on the task's name elsewhere."""

from __future__ import annotations

import re
from typing import get_args

import pytest

from rlhf_lab import reward_components
from rlhf_lab.config import TASK_FORMATS, TASKS, DataConfig, Params, TaskConfig
from rlhf_lab.evaluation import reward_check
from rlhf_lab.evaluation.gates import PROTOCOL_FIELDS, protocol_thresholds
from rlhf_lab.judge import rubrics
from rlhf_lab.presets import PRESETS
from rlhf_lab.tasks import docstring
from rlhf_lab.tasks.registry import CRS, NO_RECOMMENDATION_SCORE, get_task
from rlhf_lab.tasks.registry import TASKS as REGISTRY

from .conftest import REPO

SRC = REPO / "src" / "rlhf_lab"
BRANCH_ON_TASK = re.compile(
    r"\btask(?:_name|\.name)?\s*[!=]=|[!=]=\s*\w*\.?task(?:_name|\.name)?\b"
    r"|[!=]=\s*[\"'](?:chat|crs|docstring)[\"']"
)


def test_the_registry_and_config_name_the_same_tasks_in_the_same_order():
    assert list(REGISTRY) == list(TASKS) == list(TASK_FORMATS) == ["chat", "crs", "docstring"]
    assert get_args(TaskConfig.model_fields["name"].annotation) == TASKS
    assert all(get_task(n).name == n for n in TASKS)
    with pytest.raises(ValueError, match="unknown task 'poetry'; known: chat, crs, docstring"):
        get_task("poetry")


def test_each_task_declares_consistent_formats_rules_weights_and_preset():
    formats = set(get_args(DataConfig.model_fields["format"].annotation))
    for task in REGISTRY.values():
        assert set(task.formats) <= formats
        assert all(n.startswith(f"{task.name}/") for n in task.reward_rules)
        assert set(task.weights()) <= set(task.reward_rules)  # docstring/doctest: weight 0
        assert set(task.gate_defaults) <= set(PROTOCOL_FIELDS)
        if task.preset is not None:
            assert PRESETS[task.preset].overrides["task"]["name"] == task.name
    assert get_task("chat").weights() == {}
    assert CRS.weights() == {"crs/recommendation": 1.0}
    assert get_task("docstring").weights() == {
        f"docstring/{k}": v for k, v in docstring.DEFAULT_WEIGHTS.items()
    }


def test_each_task_owns_the_parsers_of_its_formats_and_no_format_has_two():
    from rlhf_lab.data.sources import FORMATS, GENERIC_PARSERS
    from rlhf_lab.tasks.registry import FORMAT_PARSERS

    for task in REGISTRY.values():
        assert tuple(task.parsers) == task.formats
    assert get_task("chat").parsers == {}
    assert list(FORMAT_PARSERS) == ["redial", "crs_turns", "docstring", "humaneval"]
    assert not set(FORMAT_PARSERS) & set(GENERIC_PARSERS)
    assert set(FORMAT_PARSERS) | set(GENERIC_PARSERS) == set(FORMATS)


def test_the_consumers_read_the_tasks():
    """Every former name branch now reads the task object: the values below are the ones the
    branches used to hard-code."""
    # reward factory: every task's rules, after the generic text rules
    rules = reward_components.rule_names()
    assert rules[: rules.index("crs/recommendation")] == [n for n in rules if n.startswith("text/")]
    assert reward_components.task_rules("docstring") == [
        f"docstring/{c}" for c in docstring.COMPONENTS
    ]
    # analyze_rewards: the tasks with rules to check, the formats they read
    assert reward_check.TASKS == ("crs", "docstring")
    assert get_task("crs").formats == ("redial", "crs_turns")
    assert get_task("docstring").formats == ("docstring", "humaneval")
    # train_recommender: only crs fits a recommender; the others copy their prompts through
    assert [n for n, t in REGISTRY.items() if t.has_recommender] == ["crs"]
    # gates: docstring's Phase-1 defaults; chat and crs none
    gates = Params().eval.gates.protocol
    assert protocol_thresholds(gates, "docstring") == docstring.PHASE1_GATES
    assert protocol_thresholds(gates, "chat") is None is protocol_thresholds(gates, "crs")
    # judge: docstring shows the code, the others the conversation; crs's no-movie rule
    row = {"prompt": [{"role": "user", "content": "hi"}], "meta": {"code": "def f(): pass"}}
    assert rubrics.context_for("docstring", row) == "def f(): pass"
    assert rubrics.context_for("chat", row) == "User: hi"
    crs_row = {"prompt": [], "meta": {"movies": {"1": "Alien"}, "gold_movies": ["1"]}}
    assert rubrics.forced_scores("crs", "Nice weather", crs_row) == {
        "recommendation": NO_RECOMMENDATION_SCORE
    }
    assert rubrics.forced_scores("crs", "Watch Alien", crs_row) == {}
    assert rubrics.forced_scores("chat", "Nice weather", crs_row) == {}
    assert get_task("crs").reply_flags(["Watch Alien", "no"], [crs_row] * 2, None) == {
        "rec_hit": [1.0, 0.0],
        "rec": [1.0, 0.0],
        "hallucinated": [0.0, 0.0],  # "Alien" is the row's own movie; "no" names none
    }


def test_no_module_outside_the_registry_branches_on_the_task_name():
    registry = SRC / "tasks" / "registry.py"
    found = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path != registry
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if BRANCH_ON_TASK.search(line)
    ]
    assert not found, "call the task object (rlhf_lab.tasks.registry.get_task):\n" + "\n".join(
        found
    )


def test_the_branch_pattern_has_teeth():
    for line in (
        'if task == "crs":',
        'x if params.task.name == "crs" else None',
        "if check.task == t:",
        'if code and task != "docstring":',
        "return task_name == TASK",
        'if name == "crs":',
    ):
        assert BRANCH_ON_TASK.search(line)
    assert not BRANCH_ON_TASK.search("task = get_task(name)")


def test_the_rubrics_moved_into_the_tasks_without_changing_what_the_judge_sees():
    # The shas main computed when the rubrics were a dict in judge/rubrics.py: cached judge
    # scores stay valid. Editing a rubric on purpose changes its sha; update it here then.
    assert {t: rubrics.rubric_sha(t) for t in TASKS} == {
        "chat": "a56720c6cfc086d126b0c77ac1091d9edb995b308c9fe8532575868fd48638c4",
        "crs": "5ffb9cd8a3dfed6df1b0482ed8081491eb97e1795eee48a6649c05fd0b5472df",
        "docstring": "d14835cad3d04e6e3c13ea196c1b3490862c198c53ee7f74eff7a0fde0938bb8",
    }
