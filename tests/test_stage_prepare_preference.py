"""prepare_preference through the real CLI: embedded chitchat + tiny policy, hh and redial files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.data.splits import assign_split
from rlhf_lab.data.validate import REASONS
from rlhf_lab.io import read_jsonl


def run(tmp_path: Path, data: dict, task: dict | None = None) -> tuple[int, str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data, "task": task or {"name": "chat"}}))
    result = CliRunner().invoke(app, ["prepare_preference", "--params", str(params)])
    return result.exit_code, result.output


def rows(tmp_path: Path, kind: str) -> dict[str, list[dict]]:
    return {s: read_jsonl(tmp_path / f"data/{kind}/{s}.jsonl") for s in ("train", "valid", "test")}


@pytest.fixture
def workdir(tiny_models, tmp_path, monkeypatch) -> Path:
    """A scratch repo root holding models/base/policy materialised from the tiny policy."""
    monkeypatch.chdir(tmp_path)
    models.materialise_policy(
        str(tiny_models["policy"]), tmp_path / "models/base/policy", "float32", None
    )
    return tmp_path


def hh_line(prompt: str, chosen: str, rejected: str) -> str:
    t = f"\n\nHuman: {prompt}\n\nAssistant: "
    return json.dumps({"chosen": t + chosen, "rejected": t + rejected})


def test_embedded_chitchat_reference_vs_sample(workdir):
    data = {
        "max_examples": 16,
        "sample_max_new_tokens": 4,
        "sample_batch_size": 8,
        # keep: the tiny random policy's 4-token replies almost never reach a sentence end.
        "unfinished_samples": "keep",
    }
    code, out = run(workdir, data)
    assert code == 0, out
    metrics = json.loads((workdir / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/format"] == "chitchat" and metrics["data/pairs"] == "reference_vs_sample"
    assert metrics["data/label_source"] == "human"
    assert metrics["data/rows_read"] == 7168 and metrics["data/rows_kept"] == 16
    assert metrics["sample/count"] == 16
    prompts, pref = rows(workdir, "prompts"), rows(workdir, "preference")
    assert sum(len(v) for v in prompts.values()) == 16
    n_pairs = sum(len(v) for v in pref.values())
    assert n_pairs == 16 - metrics["pairs/dropped"] and n_pairs >= 14
    for split in ("train", "valid", "test"):
        assert metrics[f"data/{split}_prompts"] == len(prompts[split])
        assert metrics[f"data/{split}_pairs"] == len(pref[split])
        for row in prompts[split]:
            # the split is a function of the conversation and the seed only
            group = f"chitchat-{row['meta']['conversation_id']}"
            assert assign_split(group, 0, 0.1, 0.2) == split  # the defaults
            assert row["prompt"][-1]["role"] == "user" and row["reference"]
            assert len(row["prompt"]) <= 6
    references = {r["id"]: r["reference"] for split in prompts.values() for r in split}
    for row in (r for split in pref.values() for r in split):
        assert row["chosen"] == references[row["id"]]  # chosen = the human reply
        assert row["rejected"] and row["chosen"] != row["rejected"]
        assert row["meta"]["pairs"] == "reference_vs_sample"
        assert 1 <= row["meta"]["rejected_tokens"] <= 4
    # the real chats hold a few over-long, empty and repeated turns: all reported, by reason
    invalid = read_jsonl(workdir / "data/invalid/train.jsonl")
    reasons = {r["reason"] for r in invalid}
    assert {"too_long", "duplicate", "empty_text"} <= reasons
    assert len(invalid) == metrics["invalid/total"] + metrics["pairs/dropped"]
    assert all(r["source"] == "chitchat" and r["line"] >= 1 for r in invalid)
    assert set(REASONS) <= {k.removeprefix("invalid/") for k in metrics}
    assert metrics["invalid/fraction"] < 0.01
    assert not [p for p in (workdir / "data").iterdir() if p.name.startswith(".")]


def test_hh_file_human_pairs_invalid_rows_and_determinism(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/base/policy: human pairs never load the policy
    lines = [hh_line(f"question {i}?", f"answer {i}", f"no idea {i}") for i in range(30)]
    lines += ["{oops", hh_line("q", "same", "same"), lines[0]]
    src = tmp_path / "raw" / "pairs.jsonl"
    src.parent.mkdir()
    src.write_text("\n".join(lines) + "\n")
    data = {"source": "raw/pairs.jsonl", "valid_fraction": 0.2, "test_fraction": 0.2}
    code, out = run(tmp_path, data)
    assert code == 0, out
    first = {p: p.read_bytes() for p in sorted((tmp_path / "data").rglob("*.jsonl"))}
    pref = rows(tmp_path, "preference")
    assert sum(len(v) for v in pref.values()) == 30
    assert min(len(v) for v in pref.values()) > 0
    for row in (r for split in pref.values() for r in split):
        assert row["label_source"] == "human" and row["chosen"] != row["rejected"]
        assert row["chosen"].startswith("answer ") and row["rejected"].startswith("no idea ")
    prompts = rows(tmp_path, "prompts")
    assert [r["id"] for r in prompts["test"]] == [r["id"] for r in pref["test"]]
    # data/invalid/<source split>.jsonl: the file name without extensions
    invalid = read_jsonl(tmp_path / "data/invalid/pairs.jsonl")
    assert [(r["reason"], r["line"]) for r in invalid] == [
        ("bad_json", 31),
        ("chosen_equals_rejected", 32),
        ("duplicate", 33),
    ]
    metrics = json.loads((tmp_path / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/pairs"] == "human" and metrics["invalid/total"] == 3
    assert metrics["invalid/fraction"] == pytest.approx(3 / 33)
    assert "sample/count" not in metrics
    # rerun: byte-identical outputs; another seed: another split
    assert run(tmp_path, data)[0] == 0
    assert {p: p.read_bytes() for p in sorted((tmp_path / "data").rglob("*.jsonl"))} == first
    assert run(tmp_path, data | {"seed": 1})[0] == 0
    assert rows(tmp_path, "preference") != pref


def test_too_many_invalid_rows_exit_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [hh_line("q1", "a", "b"), "not json", hh_line("q2", "c", "c")]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    code, out = run(tmp_path, {"source": "bad.jsonl"})
    assert code == 2
    line = " ".join(out.split())  # rich may wrap the one line on a narrow terminal
    assert line.startswith("error: bad.jsonl:2: bad_json: Expecting value at column 1")
    assert "2 of 3 rows (66.7%) are invalid" in line
    # the dropped rows are there to inspect, outside the outputs; no output was written
    assert "every dropped row is in .rlhf-lab/failed/prepare_preference/data/invalid/" in line
    failed = tmp_path / ".rlhf-lab/failed/prepare_preference/data/invalid/bad.jsonl"
    assert [r["line"] for r in read_jsonl(failed)] == [2, 3]
    assert not (tmp_path / "data").exists()


def test_unfinished_samples_are_trimmed_or_dropped_with_their_reason(workdir):
    data = {"max_examples": 16, "sample_max_new_tokens": 6, "sample_batch_size": 8}
    code, out = run(workdir, {**data, "unfinished_samples": "trim"})
    assert code == 0, out
    metrics = json.loads((workdir / "metrics/full/prepare_preference.json").read_text())
    pref = [r for split in rows(workdir, "preference").values() for r in split]
    n_unfinished = metrics.get("pairs/dropped_unfinished_sample", 0)
    assert len(pref) + metrics["pairs/dropped"] == 16 and n_unfinished >= 1
    for row in pref:
        # every rejected reply reads as finished: it ended on EOS or was cut at a sentence end
        assert row["meta"]["rejected_eos"] or row["rejected"].rstrip("\"')]").endswith(
            (".", "!", "?", "\u2026")
        )
    trimmed = sum(r["meta"]["rejected_trimmed"] for r in pref)
    assert metrics["sample/trimmed_fraction"] == pytest.approx(trimmed / len(pref) if pref else 0)
    # nothing is lost: each dropped pair is in data/invalid with the reply as sampled
    invalid = read_jsonl(workdir / "data/invalid/train.jsonl")
    unfinished = [r for r in invalid if r["reason"] == "unfinished_sample"]
    assert len(unfinished) == n_unfinished
    assert all(r["raw"]["rejected"] and r["line"] >= 1 for r in unfinished)
    assert all("cut at 6 tokens" in r["detail"] for r in unfinished)

    code, out = run(workdir, {**data, "unfinished_samples": "drop"})
    assert code == 0, out
    metrics = json.loads((workdir / "metrics/full/prepare_preference.json").read_text())
    pref = [r for split in rows(workdir, "preference").values() for r in split]
    assert all(r["meta"]["rejected_eos"] for r in pref)
    assert metrics["pairs/dropped_unfinished_sample"] >= n_unfinished


def test_redial_judge_candidates(workdir):
    dialogue = {
        "conversationId": "5",
        "respondentWorkerId": 2,
        "initiatorWorkerId": 1,
        "movieMentions": {"10": "Alien (1979)"},
        "respondentQuestions": {"10": {"suggested": 1, "seen": 0, "liked": 2}},
        "initiatorQuestions": {},
        "messages": [
            {"text": "hi! any scary movie?", "senderWorkerId": 1},
            {"text": "try @10", "senderWorkerId": 2},
            {"text": "seen it, another?", "senderWorkerId": 1},
            {"text": "sorry, that is all I know", "senderWorkerId": 2},
        ],
    }
    lines = []
    for i in range(6):  # six dialogues that differ in their first line (or they'd be duplicates)
        messages = [dict(dialogue["messages"][0], text=f"hi! any scary movie? ({i})")]
        lines.append(
            json.dumps(
                dialogue
                | {"conversationId": str(i)}
                | {"messages": messages + dialogue["messages"][1:]}
            )
        )
    (workdir / "dialogues.jsonl").write_text("\n".join(lines) + "\n")
    data = {
        "source": "dialogues.jsonl",
        "pairs": "judge",
        "num_candidates": 3,
        "sample_max_new_tokens": 5,
        "sample_temperature": 1.0,
        "unfinished_samples": "keep",  # random 5-token replies rarely end a sentence
    }
    code, out = run(workdir, data, task={"name": "crs", "system_prompt": "Recommend movies."})
    assert code == 0, out
    metrics = json.loads((workdir / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/format"] == "redial" and metrics["data/label_source"] == "judge"
    assert metrics["sample/count"] == 12 * 3
    prompts = [r for split in rows(workdir, "prompts").values() for r in split]
    assert len(prompts) == 12
    by_turn = {r["meta"]["turn"]: r for r in prompts if r["meta"]["conversation_id"] == "0"}
    assert by_turn[1]["reference"] == "try Alien (1979)"
    assert by_turn[1]["meta"]["gold_movies"] == ["10"]
    assert by_turn[1]["meta"]["movies"] == {"10": "Alien (1979)"}
    assert by_turn[3]["meta"]["gold_movies"] == []
    pref = [r for split in rows(workdir, "preference").values() for r in split]
    assert len(pref) == 12 - metrics["pairs/dropped"] >= 10
    for row in pref:
        assert row["chosen"] is None and row["rejected"] is None
        assert row["label_source"] == "judge"
        assert 2 <= len(row["candidates"]) == len(set(row["candidates"])) <= 3
        # the system prompt is used for sampling, never stored in rows
        assert all(m["role"] != "system" for m in row["prompt"])


def test_sampling_without_a_base_policy_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"code": "def f(): pass", "docstring": "F."}))
    code, out = run(tmp_path, {"source": "d.jsonl"}, task={"name": "docstring"})
    assert code == 2
    assert "models/base/policy, which is missing; run `rlhf-lab prepare_models`" in " ".join(
        out.split()
    )
