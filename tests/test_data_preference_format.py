"""data.format 'preference': TRL's explicit-prompt preference rows (the arena's vote file)."""

from __future__ import annotations

import pytest

from rlhf_lab.config import DataConfig, TaskConfig
from rlhf_lab.data.pairs import human_pairs, resolve_pairs
from rlhf_lab.data.sources import parse_preference, resolve_format
from rlhf_lab.data.validate import BAD_TRANSCRIPT, NO_PREFERENCE, WRONG_TYPE, Origin, RowError

ORIGIN = Origin("votes.jsonl", 3, "votes")
USER = {"role": "user", "content": "Any good films?"}


def parse(row: dict, max_turns: int = 6):
    return parse_preference(row, ORIGIN, max_turns=max_turns)


def test_standard_form_strings():
    [ex] = parse({"prompt": "Any good films?", "chosen": "Alien.", "rejected": "No."})
    assert ex.prompt == [USER] and (ex.chosen, ex.rejected, ex.reference) == (
        "Alien.",
        "No.",
        "Alien.",
    )
    assert ex.id.startswith("pref-") and ex.group.startswith("pref-")
    assert ex.meta == {"origin": "votes.jsonl:3"}


def test_conversational_form_keeps_id_and_extra_keys_drops_system_turns():
    row = {
        "id": "c1",
        "prompt": [{"role": "system", "content": "Be nice."}, USER],
        "chosen": [{"role": "assistant", "content": "Alien."}],
        "rejected": [{"role": "assistant", "content": "No."}],
        "label": "left",
        "label_source": "human",
        "chosen_model": "ppo",
    }
    [ex] = parse(row)
    assert ex.id == "pref-c1" and ex.prompt == [USER]
    assert (ex.chosen, ex.rejected) == ("Alien.", "No.")
    assert ex.meta["chosen_model"] == "ppo" and ex.meta["label"] == "left"
    [row_out] = human_pairs([ex])
    assert row_out["label_source"] == "human" and row_out["chosen"] == "Alien."


def test_prompt_window_starts_with_user():
    turns = [{"role": r, "content": f"t{i}"} for i, r in enumerate(["user", "assistant"] * 3)]
    [ex] = parse({"prompt": [*turns, USER], "chosen": "a", "rejected": "b"}, max_turns=4)
    assert ex.prompt[0]["role"] == "user" and len(ex.prompt) == 3


@pytest.mark.parametrize(
    ("row", "reason", "field"),
    [
        ({"prompt": "q", "chosen": None, "rejected": None, "label": "tie"}, NO_PREFERENCE, "label"),
        (
            {"prompt": "q", "chosen": None, "rejected": None, "label": "both_bad"},
            NO_PREFERENCE,
            "label",
        ),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, WRONG_TYPE, "prompt"),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
            WRONG_TYPE,
            "prompt[0].role",
        ),
        (
            {
                "prompt": [USER, {"role": "assistant", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            },
            BAD_TRANSCRIPT,
            "prompt",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            WRONG_TYPE,
            "chosen",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}] * 2},
            WRONG_TYPE,
            "rejected",
        ),
    ],
)
def test_rows_that_are_not_pairs(row, reason, field):
    with pytest.raises(RowError) as err:
        parse(row)
    assert (err.value.reason, err.value.field) == (reason, field)


def test_auto_format_and_auto_pairs():
    cfg = DataConfig(source="data/human/votes.jsonl")
    first = {"prompt": [USER], "chosen": None, "rejected": None, "label": "tie"}
    assert resolve_format(cfg, TaskConfig(), first) == "preference"
    # hh rows have chosen/rejected but no prompt: still hh
    assert resolve_format(cfg, TaskConfig(), {"chosen": "x", "rejected": "y"}) == "hh"
    assert resolve_pairs("auto", "preference") == "human"
    assert resolve_pairs("human", "preference") == "human"
