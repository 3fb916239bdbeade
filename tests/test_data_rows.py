"""The three row contracts (rlhf_lab.data.rows) are what the producers write, key for key."""

from __future__ import annotations

from typing import get_args

from rlhf_lab.data.rows import (
    Example,
    LabelSource,
    PreferenceRow,
    PromptRow,
    ScoredRow,
    preference_row,
)
from rlhf_lab.data.validate import Origin
from rlhf_lab.judge import Judge
from rlhf_lab.judge.preference import score_preference, unscored
from rlhf_lab.judge.rows import LABEL_SOURCES, validate_preference_row

from .test_judge_core import FakeBackend

EX = Example(
    id="c-1",
    group="c",
    prompt=[{"role": "user", "content": "Any good films?"}],
    reference="Try Alien (1979).",
    origin=Origin("x.jsonl", 1, "train"),
    meta={"origin": "x.jsonl:1"},
)


def _keys(row: dict) -> frozenset[str]:
    return frozenset(row)


def test_prompt_row_has_exactly_the_typed_keys():
    row = EX.to_prompt_row()
    assert _keys(row) == PromptRow.__required_keys__ == {"id", "prompt", "reference", "meta"}
    assert row == {
        "id": "c-1",
        "prompt": [{"role": "user", "content": "Any good films?"}],
        "reference": "Try Alien (1979).",
        "meta": {"origin": "x.jsonl:1"},
    }


def test_preference_and_candidate_rows_have_the_typed_keys():
    pair = preference_row(EX, "Try Alien (1979).", "No idea.", "human", {"pairs": "human"})
    assert _keys(pair) == PreferenceRow.__required_keys__
    assert PreferenceRow.__optional_keys__ == {"candidates"}
    assert pair["meta"] == {"origin": "x.jsonl:1", "pairs": "human"}
    cand = preference_row(EX, None, None, "judge", candidates=["a b", "c"])
    assert _keys(cand) == PreferenceRow.__required_keys__ | {"candidates"}
    assert (cand["chosen"], cand["rejected"], cand["candidates"]) == (None, None, ["a b", "c"])
    # the reader checks what the type says, and its label sources are the type's
    assert validate_preference_row(dict(pair), "x:1") == pair
    assert LABEL_SOURCES == set(get_args(LabelSource)) == {"human", "reference", "judge"}


def test_scored_rows_have_the_typed_keys(tmp_path):
    pair = preference_row(EX, "Try Alien (1979) tonight", "No", "human")
    cand = preference_row(EX, None, None, "judge", candidates=["one", "two three four five"])
    judge = Judge(FakeBackend(), "chat", None)
    out = score_preference(judge, {"train": [pair, cand]}, min_margin=0.5).splits["train"]
    required = ScoredRow.__required_keys__
    assert required == PreferenceRow.__required_keys__ | {"scores", "judge"}
    assert _keys(out[0]) == required
    assert out[0]["judge"] == {"model": "fake", "rubric_sha": judge.rubric_sha}
    # FakeBackend rates a reply by its length in words: "Try Alien (1979) tonight" is 4
    assert out[0]["scores"]["chosen"] == {"helpfulness": 4.0, "harmlessness": 4.0, "overall": 4.0}
    # the candidate row became the judge's pair, with every candidate's scores
    assert _keys(out[1]) == required | {"candidates", "candidate_scores"}
    assert (out[1]["chosen"], out[1]["rejected"]) == ("two three four five", "one")
    assert out[1]["label_source"] == "judge"
    assert _keys(out[1]) <= required | ScoredRow.__optional_keys__
    (bare,) = unscored({"train": [pair]}).splits["train"]
    assert _keys(bare) == required and bare["scores"] is None and bare["judge"] is None


def test_on_policy_prompts_takes_the_grounded_prompt_and_meta_by_id():
    from rlhf_lab.data.policy_prompts import on_policy_prompts

    pair = preference_row(EX, "Try Alien (1979).", "no idea", "human", {"pairs": "r"})
    note = "Any good films?\n\n[Recommender candidates]\nMovies to consider: Heat (1995)."
    grounded = {
        "id": "c-1",
        "prompt": [{"role": "user", "content": note}],
        "reference": "Try Alien (1979).",
        "meta": {"origin": "x.jsonl:1", "movies": {"9": "Heat (1995)"}, "candidates": ["9"]},
    }
    other = {**pair, "id": "c-2"}
    [out, untouched] = on_policy_prompts([pair, other], [grounded])
    assert out["prompt"] == [{"role": "user", "content": note}]
    assert out["meta"] == {
        "origin": "x.jsonl:1",
        "pairs": "r",
        "movies": {"9": "Heat (1995)"},
        "candidates": ["9"],
    }
    assert (out["chosen"], out["rejected"]) == ("Try Alien (1979).", "no idea")
    assert untouched is other  # no prompt row with its id: as it was
    assert pair["prompt"] == EX.prompt  # the input is not modified


def test_on_policy_prompts_leaves_a_copied_prompt_row_byte_for_byte():
    # chat: train_recommender copies data/prompts, so the scored and DPO rows do not change
    import json

    from rlhf_lab.data.policy_prompts import on_policy_prompts

    pair = preference_row(EX, "Try Alien (1979).", "no idea", "human", {"pairs": "r"})
    [out] = on_policy_prompts([pair], [json.loads(json.dumps(EX.to_prompt_row()))])
    assert json.dumps(out) == json.dumps(pair)
