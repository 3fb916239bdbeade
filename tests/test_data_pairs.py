"""Pair construction: human, reference vs sample (SPIN) and judge candidates."""

from __future__ import annotations

import pytest

from rlhf_lab.data.pairs import (
    finish_sample,
    human_pairs,
    judge_candidates,
    reference_vs_sample,
    resolve_pairs,
    trim_to_sentence,
)
from rlhf_lab.data.rows import Example
from rlhf_lab.data.validate import Origin
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import Sample


def ex(i: int, reference: str = "the human reply", **kw) -> Example:
    return Example(
        id=f"ex-{i}",
        group=f"g-{i}",
        prompt=[{"role": "user", "content": f"question {i}"}],
        reference=reference,
        origin=Origin("f.jsonl", i, "f"),
        meta={"turn": i},
        **kw,
    )


def test_resolve_pairs():
    assert resolve_pairs("auto", "hh") == "human"
    for fmt in ("chitchat", "redial", "docstring"):
        assert resolve_pairs("auto", fmt) == "reference_vs_sample"
    assert resolve_pairs("judge", "hh") == "judge"
    with pytest.raises(ConfigError, match=r"data\.pairs 'human' needs human-labelled pairs"):
        resolve_pairs("human", "chitchat")


def test_human_pairs_keep_labels():
    (row,) = human_pairs([ex(1, chosen="good", rejected="bad")])
    assert row == {
        "id": "ex-1",
        "prompt": [{"role": "user", "content": "question 1"}],
        "chosen": "good",
        "rejected": "bad",
        "label_source": "human",
        "meta": {"turn": 1, "pairs": "human"},
    }


def test_reference_vs_sample_drops_unusable_samples():
    examples = [ex(1), ex(2), ex(3)]
    samples = [
        Sample("a model reply", 4, True),
        Sample("", 48, False),
        Sample("the human reply", 5, True),
    ]
    rows, dropped = reference_vs_sample(examples, samples, max_chars=100)
    assert len(rows) == 1
    assert rows[0]["chosen"] == "the human reply" and rows[0]["rejected"] == "a model reply"
    assert rows[0]["label_source"] == "human"
    assert rows[0]["meta"] == {
        "turn": 1,
        "pairs": "reference_vs_sample",
        "rejected_tokens": 4,
        "rejected_eos": True,
        "rejected_trimmed": False,
    }
    assert [(d.id, d.reason, d.field) for d in dropped] == [
        ("ex-2", "empty_text", "rejected"),
        ("ex-3", "chosen_equals_rejected", "rejected"),
    ]
    assert dropped[0].detail == "sampled reply: text is empty"
    assert dropped[0].to_json()["line"] == 2


def test_judge_candidates_are_distinct_and_unlabelled():
    examples = [ex(1), ex(2)]
    samples = [
        [Sample("one", 2, True), Sample("two", 3, False), Sample("one", 2, True)],
        [Sample("same", 2, True), Sample("same", 2, True), Sample("", 1, True)],
    ]
    rows, dropped = judge_candidates(examples, samples)
    assert rows == [
        {
            "id": "ex-1",
            "prompt": [{"role": "user", "content": "question 1"}],
            "chosen": None,
            "rejected": None,
            "label_source": "judge",
            "meta": {
                "turn": 1,
                "pairs": "judge",
                "candidate_tokens": [2, 3],
                "candidate_eos": [True, False],
            },
            "candidates": ["one", "two"],
        }
    ]
    assert [(d.id, d.reason) for d in dropped] == [("ex-2", "chosen_equals_rejected")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sure! I like cats. They are", "Sure! I like cats."),
        ("Really?? Yes... and then", "Really?? Yes..."),
        ('He said "no." Then he', 'He said "no."'),
        ("It costs 3.5 dollars (roughly). So", "It costs 3.5 dollars (roughly)."),
        ("Done.", "Done."),
        # No terminator followed by a space or the end: nothing to trim back to.
        ("It costs 3.5 dollars and", None),
        ("12.12.15-1022 I am happy to", None),
        ("", None),
    ],
)
def test_trim_to_sentence(text, expected):
    assert trim_to_sentence(text) == expected


def test_finish_sample_policies():
    finished = Sample("Hi there. How", 9, True)  # ended on EOS: never touched
    cut = Sample("Hi there. How are", 32, False)
    bare = Sample("Hi there and how are", 32, False)
    for policy in ("keep", "trim", "drop"):
        assert finish_sample(finished, policy) is finished
    assert finish_sample(cut, "keep") is cut
    assert finish_sample(cut, "trim") == Sample("Hi there.", 32, False)
    assert finish_sample(bare, "trim") is None
    assert finish_sample(cut, "drop") is None


def test_reference_vs_sample_trims_or_drops_unfinished_samples():
    examples = [ex(1), ex(2), ex(3)]
    samples = [
        Sample("I see. Tell me more about", 32, False),
        Sample("well I think that the", 32, False),
        Sample("Nice.", 3, True),
    ]
    rows, dropped = reference_vs_sample(examples, samples, max_chars=100, unfinished="trim")
    assert [(r["id"], r["rejected"], r["meta"]["rejected_trimmed"]) for r in rows] == [
        ("ex-1", "I see.", True),
        ("ex-3", "Nice.", False),
    ]
    assert [(d.id, d.reason, d.field) for d in dropped] == [
        ("ex-2", "unfinished_sample", "rejected")
    ]
    assert "cut at 32 tokens (no sentence end)" in dropped[0].detail
    # Nothing is lost: the dropped row keeps the reply as sampled.
    assert dropped[0].to_json()["raw"]["rejected"] == "well I think that the"

    rows, dropped = reference_vs_sample(examples, samples, max_chars=100, unfinished="drop")
    assert [r["id"] for r in rows] == ["ex-3"]
    assert [d.id for d in dropped] == ["ex-1", "ex-2"]
    assert "data.unfinished_samples is 'drop'" in dropped[0].detail


def test_judge_candidates_trim_unfinished_candidates():
    examples = [ex(1), ex(2)]
    samples = [
        [Sample("Yes. And", 8, False), Sample("No.", 2, True)],
        [Sample("maybe so and", 8, False), Sample("Fine.", 2, True)],
    ]
    rows, dropped = judge_candidates(examples, samples, unfinished="trim")
    assert [r["candidates"] for r in rows] == [["Yes.", "No."]]
    assert [(d.id, d.reason) for d in dropped] == [("ex-2", "unfinished_sample")]
