"""Arena vote file: rows in TRL's preference format, durable appends, reading back."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime

import pytest

from rlhf_lab.arena.votes import append_vote, read_votes, vote_row
from rlhf_lab.io import append_jsonl_line

PROMPT = [{"role": "user", "content": "Any good films?"}]


def row(label: str, cid: str = "c1") -> dict:
    return vote_row(
        comparison_id=cid,
        prompt=PROMPT,
        models=("sft", "ppo"),
        replies=("Left reply.", "Right reply."),
        label=label,
        note="n",
        generation={"temperature": 0.7, "seed": 3},
        timestamp=datetime(2026, 12, 2, 11, 40, tzinfo=UTC),
    )


def test_pair_vote_is_a_trl_conversational_preference_row():
    r = row("right")
    assert r["prompt"] == PROMPT and r["label_source"] == "human"
    assert r["chosen"] == [{"role": "assistant", "content": "Right reply."}]
    assert r["rejected"] == [{"role": "assistant", "content": "Left reply."}]
    assert (r["position"], r["chosen_model"], r["rejected_model"]) == ("right", "ppo", "sft")
    assert r["timestamp"] == "2026-12-02T11:40:00Z"
    assert r["generation"] == {"temperature": 0.7, "seed": 3}
    left = row("left")
    assert left["chosen"][0]["content"] == "Left reply." and left["chosen_model"] == "sft"


@pytest.mark.parametrize("label", ["tie", "both_bad"])
def test_tie_and_both_bad_keep_both_replies_but_are_no_pair(label):
    r = row(label)
    assert r["label"] == label and r["chosen"] is None and r["rejected"] is None
    assert (r["reply_left"], r["reply_right"]) == ("Left reply.", "Right reply.")
    assert r["position"] is None


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="label must be one of"):
        row("middle")


def test_append_and_read_back_reports_unreadable_lines(tmp_path):
    path = tmp_path / "human" / "votes.jsonl"
    append_vote(path, row("left", "a"))
    with open(path, "a") as fh:
        fh.write('{"not": "a vote"}\nnot json\n')
    append_vote(path, row("tie", "b"))
    votes, bad = read_votes(path)
    assert [v["id"] for v in votes] == ["a", "b"] and bad == [2, 3]
    assert read_votes(tmp_path / "absent.jsonl") == ([], [])


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "votes.jsonl"
    append_vote(path, row("left", "a"))
    with open(path, "a") as fh:
        fh.write('{"id": "torn", "pro')  # a crash mid-write: no newline
    append_vote(path, row("right", "b"))
    votes, bad = read_votes(path)
    assert [v["id"] for v in votes] == ["a", "b"] and bad == [2]


def _writer(path: str, start: int, n: int) -> None:
    for i in range(start, start + n):
        # a long row: many writers' bytes would interleave without the lock and one write
        append_jsonl_line(path, {"i": i, "pad": "x" * 20_000})


def test_concurrent_appends_from_processes_never_interleave(tmp_path):
    path = tmp_path / "votes.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), k * 25, 25)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert sorted(json.loads(line)["i"] for line in lines) == list(range(100))
