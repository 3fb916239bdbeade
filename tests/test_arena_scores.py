"""Arena rubric scores (ECR's human evaluation): validation, the file, per-policy means with CIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_lab.arena import scores
from rlhf_lab.arena.command import METRICS
from rlhf_lab.arena.ratings import MIN_SAMPLES
from rlhf_lab.evaluation.stats import mean_ci
from rlhf_lab.judge.rubrics import ECR_RUBRICS

PROMPT = [{"role": "user", "content": "a movie like Alien?"}]


def all_(value: int) -> dict[str, int]:
    return dict.fromkeys(scores.RUBRICS, value)


def row(left: str, right: str, lv: int, rv: int, rater: str | None = None) -> dict:
    return scores.score_row(
        comparison_id="c",
        prompt=PROMPT,
        models=(left, right),
        replies=("x", "y"),
        scores={"left": all_(lv), "right": all_(rv)},
        rater=rater,
    )


def test_rubrics_are_ecrs_five_from_the_judge_module():
    assert scores.RUBRICS == (
        "emotional_intensity",
        "emotional_persuasiveness",
        "logical_persuasiveness",
        "informativeness",
        "lifelikeness",
    )
    assert tuple(d.name for d in ECR_RUBRICS) == scores.RUBRICS


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "keys left and right"),
        ({"left": all_(3)}, "keys left and right"),
        ({"left": all_(3), "right": {"lifelikeness": 3}}, "scores.right must score exactly"),
        ({"left": all_(3), "right": all_(6)}, "scores.right.emotional_intensity .* got 6"),
        ({"left": all_(3), "right": all_(True)}, "got True"),
        ({"left": all_(3), "right": all_(2.5)}, "got 2.5"),
    ],
)
def test_check_scores_refuses_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        scores.check_scores(bad)


def test_file_round_trip_skips_bad_lines(tmp_path):
    path = tmp_path / "human" / "ratings.jsonl"
    scores.append_scores(path, row("sft", "ppo", 2, 4, rater="ann"))
    with open(path, "a") as fh:
        fh.write("{torn\n")
        fh.write(json.dumps({"model_left": "a", "model_right": "b", "scores": {}}) + "\n")
    scores.append_scores(path, row("ppo", "sft", 5, 1))
    rows, bad = scores.read_scores(path)
    assert bad == [2, 3]
    assert [r["rater"] for r in rows] == ["ann", None]
    assert rows[0]["scores"]["right"] == all_(4)
    assert scores.read_scores(tmp_path / "absent.jsonl") == ([], [])


def test_summary_means_per_policy_and_rubric_with_hand_computed_values():
    # ppo: 4, 5 -> 4.5; sft: 2, 1 -> 1.5. Two replies each: below MIN_SAMPLES, no interval.
    m = scores.summary([row("sft", "ppo", 2, 4), row("ppo", "sft", 5, 1)], n_boot=200)
    assert m["arena/rated_comparisons"] == 2
    assert m["arena/ppo/human/replies"] == 2
    for r in scores.RUBRICS:
        assert m[f"arena/ppo/human/{r}"] == pytest.approx(4.5)
        assert m[f"arena/sft/human/{r}"] == pytest.approx(1.5)
        assert f"arena/ppo/human/{r}_lo" not in m


def test_summary_ci_is_the_bootstrap_of_evaluation_stats():
    values = [1, 2, 3, 4, 5] * 2  # ppo on the right of 10 comparisons: mean 3
    rows = [row("sft", "ppo", 3, v) for v in values]
    assert len(rows) >= MIN_SAMPLES
    m = scores.summary(rows, n_boot=500, seed=7)
    mean, lo, hi = mean_ci(values, n_boot=500, seed=7)
    assert mean == 3.0
    key = "arena/ppo/human/lifelikeness"
    assert (m[key], m[f"{key}_lo"], m[f"{key}_hi"]) == (mean, lo, hi)
    assert 1.0 <= lo < 3.0 < hi <= 5.0
    # sft scored 3 every time: a point interval, but it has 10 replies so it is shown.
    assert (m["arena/sft/human/informativeness_lo"], m["arena/sft/human/informativeness_hi"]) == (
        3.0,
        3.0,
    )


def test_arena_metrics_are_declared_for_dvc_and_committed_empty():
    root = Path(__file__).resolve().parents[1]
    assert str(METRICS) in yaml.safe_load((root / "dvc.yaml").read_text())["metrics"]
    # Present before any vote, so `dvc metrics show` never reports it missing.
    assert json.loads((root / METRICS).read_text()) == {"arena/votes": 0}
