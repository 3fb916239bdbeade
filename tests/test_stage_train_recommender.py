"""train_recommender through the real CLI: crs fits and measures; other tasks skip."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.io import read_jsonl, write_jsonl
from rlhf_lab.tasks.crs import recommender

from .test_crs_recommender import synthetic_rows


def _write_prompts(root, train, test, valid=None):
    write_jsonl(root / "data/prompts/train.jsonl", train)
    write_jsonl(root / "data/prompts/test.jsonl", test)
    if valid is not None:
        write_jsonl(root / "data/prompts/valid.jsonl", valid)


def test_crs_fits_the_recommender_and_measures_it_beside_the_baselines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prompts").mkdir(parents=True)
    train, test = synthetic_rows()
    _write_prompts(tmp_path, train, test, valid=test[:4])
    ids = [f"{kind}{i}" for kind, n in (("a", 30), ("b", 30), ("p", 12)) for i in range(n)]
    csv = "movieId,movieName\n" + "".join(f"{i},Film {i} (2000)\n" for i in ids)
    (tmp_path / "movies.csv").write_text(csv)
    params = {"task": {"name": "crs"}, "data": {"catalogue": "movies.csv"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["train_recommender", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics/full/train_recommender.json").read_text())
    assert metrics["recommender/recall@1"] == 1.0
    assert metrics["baseline_popularity/recall@10"] == 0.0
    assert metrics["baseline_cooccurrence/recall@10"] == 1.0
    assert metrics["recommender/cases"] == 30.0 and metrics["recommender/train_turns"] == 150.0
    assert metrics["recommender_vs_baseline_popularity/wilcoxon_p"] < 1e-6
    model = recommender.load(tmp_path / "models/recommender")
    assert model.items == ids and model.settings.folds == 5  # the catalogue's movies
    # every split grounded in the top recommender.candidates (5) movies; train's cross-fitted
    assert metrics["grounding/test/candidate_hit"] == 1.0
    assert metrics["grounding/valid/candidate_hit"] == 1.0
    assert 0.5 < metrics["grounding/train/candidate_hit"] <= 1.0
    for split, rows in (("train", train), ("valid", test[:4])):
        out = read_jsonl(tmp_path / f"data/grounded/{split}.jsonl")
        assert [r["id"] for r in out] == [r["id"] for r in rows]
        assert all(len(r["meta"]["candidates"]) == 5 for r in out)
        assert all(r["reference"] == "try this one" for r in out)  # SFT's targets kept
    grounded = read_jsonl(tmp_path / "data/grounded/test.jsonl")
    assert len(grounded) == 30
    first = grounded[0]
    assert first["meta"]["candidates"][0] == "b0" and len(first["meta"]["candidates"]) == 5
    note = first["prompt"][-1]["content"]
    assert "[Recommender candidates]\nMovies to consider: Film b0 (2000); " in note
    assert note.endswith("The user liked and has seen Film a0 (2000).")
    provenance = json.loads((tmp_path / "models/recommender/provenance.json").read_text())
    assert provenance["stage"] == "train_recommender"
    assert provenance["params"]["recommender"]["folds"] == 5


def test_other_tasks_skip_and_pass_the_prompts_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chat_row = {"id": "c1", "prompt": [{"role": "user", "content": "hi"}], "meta": {}}
    _write_prompts(tmp_path, [chat_row], [chat_row, chat_row])  # no valid split
    (tmp_path / "params.yaml").write_text("task:\n  name: chat\n")
    result = CliRunner().invoke(app, ["train_recommender", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics/full/train_recommender.json").read_text())
    assert metrics == {"recommender/skipped": 1, "recommender/skipped_reason": "task is chat"}
    marker = json.loads((tmp_path / "models/recommender/provenance.json").read_text())
    assert marker["skipped"] == "task is chat"
    assert sorted(p.name for p in (tmp_path / "models/recommender").iterdir()) == [
        "provenance.json"
    ]
    for split in ("train", "test"):  # byte for byte
        grounded = (tmp_path / f"data/grounded/{split}.jsonl").read_bytes()
        assert grounded == (tmp_path / f"data/prompts/{split}.jsonl").read_bytes()
    assert not (tmp_path / "data/grounded/valid.jsonl").exists()


def test_prompts_without_crs_meta_are_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prompts").mkdir(parents=True)
    chat_row = {"id": "c1", "prompt": [{"role": "user", "content": "hi"}], "meta": {}}
    _write_prompts(tmp_path, [chat_row], [])
    (tmp_path / "params.yaml").write_text("task:\n  name: crs\n")
    result = CliRunner().invoke(app, ["train_recommender", "--params", "params.yaml"])
    assert result.exit_code == 2
    assert "data/prompts/train.jsonl:1: meta.context_movies missing" in result.output
    assert not (tmp_path / "models/recommender").exists()
    assert not (tmp_path / "data/grounded").exists()
    assert not (tmp_path / "metrics").exists()
