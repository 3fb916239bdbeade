"""crs preference data on the prompts the policy is given, through the real CLI: a ReDial
source -> prepare_preference (reference-vs-sample pairs from the tiny policy) ->
train_recommender -> score_with_llm and train_dpo, whose pairs carry the candidate note."""

from __future__ import annotations

import json
import shutil

import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.io import read_jsonl
from rlhf_lab.stages import train_dpo
from rlhf_lab.tasks.crs.grounding import NOTE_HEADER

from .test_e2e_dvc import _redial_dialogues


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, [*args, "--params", "params.yaml"])
    assert result.exit_code == 0, result.output


def test_crs_pairs_reward_and_dpo_data_carry_the_candidates(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "redial.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _redial_dialogues(24, pairs=4)))
    ids = [f"{k}{i:02d}" for k in (1, 2) for i in range(4)]
    names = [f"Liked Film {i} (1990)" for i in range(4)] + [f"Partner {i} (2001)" for i in range(4)]
    csv = "movieId,movieName\n" + "".join(f"{i},{n}\n" for i, n in zip(ids, names, strict=True))
    (tmp_path / "movies.csv").write_text(csv)
    shutil.copytree(tiny_models["policy"], tmp_path / "models/base/policy")
    shutil.copytree(tiny_models["policy"], tmp_path / "models/sft")  # DPO's start
    params = {
        "task": {"name": "crs"},
        "data": {
            "source": "redial.jsonl",
            "catalogue": "movies.csv",
            "max_examples": 0,
            "sample_max_new_tokens": 6,
            "unfinished_samples": "keep",
        },
        "recommender": {"folds": 3, "candidates": 3},
        "judge": {"backend": "none"},
        "dpo": {"epochs": 1, "batch_size": 8, "max_length": 96, "lora": {"r": 4, "alpha": 8}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("prepare_preference", "train_recommender", "score_with_llm"):
        _cli(stage)
    seen: dict[str, list] = {}
    real = train_dpo.train_dpo_model

    def spy(sft, train, valid, cfg, **kw):
        seen["train"], seen["valid"] = train, valid
        return real(sft, train, valid, cfg, **kw)

    monkeypatch.setattr(train_dpo, "train_dpo_model", spy)
    _cli("train_dpo")

    for split in ("train", "valid"):
        pairs = read_jsonl(f"data/preference/{split}.jsonl")
        grounded = {r["id"]: r for r in read_jsonl(f"data/grounded/{split}.jsonl")}
        scored = read_jsonl(f"data/scored/{split}.jsonl")
        assert pairs and [r["id"] for r in scored] == [r["id"] for r in pairs]
        for pair, row in zip(pairs, scored, strict=True):
            assert NOTE_HEADER not in pair["prompt"][-1]["content"]  # prepare_preference's
            # the reward model and the critic read these: the prompt PPO samples from
            assert row["prompt"] == grounded[row["id"]]["prompt"]
            assert NOTE_HEADER in row["prompt"][-1]["content"]
            assert len(row["meta"]["candidates"]) == 3
            assert set(row["meta"]["candidates"]) <= set(row["meta"]["movies"])
            assert (row["chosen"], row["rejected"]) == (pair["chosen"], pair["rejected"])
        dpo = seen[split]
        assert len(dpo) == len(pairs)
        assert all(NOTE_HEADER in p.prompt[-1]["content"] for p in dpo)
        assert [p.prompt for p in dpo] == [grounded[r["id"]]["prompt"] for r in pairs]
    m = json.loads((tmp_path / "metrics/full/train_dpo.json").read_text())
    assert m["train/pairs"] == len(seen["train"]) and m["valid/pairs"] == len(seen["valid"])
