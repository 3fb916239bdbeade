"""Closing the loop: arena votes -> `rlhf-lab prepare_preference` (real CLI) -> human pairs."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.arena.votes import VOTES_PATH, append_vote, vote_row
from rlhf_lab.cli import app
from rlhf_lab.io import read_jsonl

from .test_e2e_dvc import DVC, _run, tiny_repo  # noqa: F401 (tiny_repo: the fixture)


def test_votes_become_human_pairs_and_ties_are_recorded_not_paired(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/base/policy: human pairs never sample
    labels = ["left", "right"] * 6 + ["tie", "both_bad", "tie"]
    for i, label in enumerate(labels):
        append_vote(
            VOTES_PATH,
            vote_row(
                comparison_id=f"c{i}",
                prompt=[{"role": "user", "content": f"question {i}?"}],
                models=("sft", "ppo"),
                replies=(f"left answer {i}", f"right answer {i}"),
                label=label,
                generation={"temperature": 0.7, "max_new_tokens": 32, "seed": i},
            ),
        )
    params = tmp_path / "params.yaml"
    data = {"source": str(VOTES_PATH), "valid_fraction": 0.2, "test_fraction": 0.2}
    params.write_text(yaml.safe_dump({"data": data}))
    result = CliRunner().invoke(app, ["prepare_preference", "--params", str(params)])
    assert result.exit_code == 0, result.output

    metrics = json.loads((tmp_path / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/format"] == "preference" and metrics["data/pairs"] == "human"
    assert metrics["data/label_source"] == "human"
    assert (metrics["data/rows_read"], metrics["data/rows_kept"]) == (15, 12)
    assert metrics["data/no_preference"] == 3 and metrics["invalid/total"] == 0
    pref = [r for s in ("train", "valid", "test") for r in read_jsonl(f"data/preference/{s}.jsonl")]
    assert len(pref) == 12
    for row in pref:
        i = int(row["id"].removeprefix("pref-c"))
        side, other = ("left", "right") if labels[i] == "left" else ("right", "left")
        assert row["prompt"] == [{"role": "user", "content": f"question {i}?"}]
        assert (row["chosen"], row["rejected"]) == (f"{side} answer {i}", f"{other} answer {i}")
        assert row["label_source"] == "human" and row["meta"]["pairs"] == "human"
        assert row["meta"]["chosen_model"] == ("sft" if side == "left" else "ppo")
        assert row["meta"]["generation"]["seed"] == i
    skipped = read_jsonl("data/invalid/votes.jsonl")
    assert [(r["reason"], r["line"], r["id"]) for r in skipped] == [
        ("no_preference", 13, None),
        ("no_preference", 14, None),
        ("no_preference", 15, None),
    ]
    assert "tie" in skipped[0]["detail"] and skipped[0]["raw"]["id"] == "c12"


def test_new_votes_make_dvc_rerun_prepare_preference(tiny_repo):  # noqa: F811
    """dvc.yaml's prepare_preference depends on data/human: a new vote makes it stale."""
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["data"]["source"] = "data/human/votes.jsonl"
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params))

    def vote(i: int) -> None:
        append_vote(
            tiny_repo / VOTES_PATH,
            vote_row(
                comparison_id=f"c{i}",
                prompt=[{"role": "user", "content": f"question {i}?"}],
                models=("sft", "ppo"),
                replies=(f"left {i}", f"right {i}"),
                label="left",
            ),
        )

    for i in range(10):
        vote(i)
    # prepare_models' output made in-process (no second CLI start); then this stage alone
    policy = tiny_repo / "models/base/policy"
    models.materialise_policy(str(tiny_repo / "tiny-models/policy"), policy, "float32", None)
    _run([*DVC, "repro", "--single-item", "track_inputs"], tiny_repo)  # data/inputs/*.json
    _run([*DVC, "repro", "--single-item", "prepare_preference"], tiny_repo)
    metrics = json.loads((tiny_repo / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/rows_kept"] == 10 and metrics["data/pairs"] == "human"
    assert "up to date" in _run([*DVC, "status", "prepare_preference"], tiny_repo).stdout.lower()
    vote(10)
    status = _run([*DVC, "status", "prepare_preference"], tiny_repo).stdout
    assert "modified:" in status and "data/human" in status
