"""data.format 'crs_turns': ECR / UniCRS / CRSLab's processed ReDial, one row per recommender
turn, ids named by entity2id.json / item_ids.json beside the file or data.catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import DataConfig, TaskConfig
from rlhf_lab.data.prepare import load_examples, open_source
from rlhf_lab.data.validate import BAD_TRANSCRIPT, MISSING_FIELD, UNKNOWN_ID, WRONG_TYPE
from rlhf_lab.errors import DataError
from rlhf_lab.io import read_jsonl
from rlhf_lab.tasks.crs import entity_name, load_catalogue, recommendation_score
from rlhf_lab.tasks.registry import FORMAT_PARSERS

DBP = "<http://dbpedia.org/resource/{}>"
ENTITY2ID = {
    DBP.format("Police_Academy_(1984_film)"): 1,
    DBP.format("Comedy"): 2,
    DBP.format("Alien_(film)"): 3,
    DBP.format("Jaws_(film)"): 4,
}
GOOD = {
    "dialog_id": "d1",
    "turn_id": 2,
    "context": ["Hi", "Hello, what do you like?", "I loved Police Academy (1984). Any comedies?"],
    "resp": "Try Alien, it is great!",
    "rec": [3],
    "entity": [1, 2],
    "entity_name": ["Police Academy (1984)", "Comedy"],
}


def write_dir(tmp_path: Path, rows: list[dict], items: object = (1, 3, 4)) -> Path:
    folder = tmp_path / "ecr"
    folder.mkdir(exist_ok=True)
    (folder / "train_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "entity2id.json").write_text(json.dumps(ENTITY2ID))
    if items is not None:
        (folder / "item_ids.json").write_text(json.dumps(list(items)))
    return folder


def load(source: Path, **data):
    cfg = DataConfig(source=str(source), **data)
    src = open_source(cfg, TaskConfig(name="crs"))
    return src.format, load_examples(src, cfg, FORMAT_PARSERS)


def test_entity_names_from_dbpedia_uris():
    assert entity_name(DBP.format("Police_Academy_(1984_film)")) == "Police Academy (1984)"
    assert entity_name(DBP.format("Alien_(film)")) == "Alien"
    assert entity_name(DBP.format("Se7en_(1995_American_film)")) == "Se7en (1995)"
    assert entity_name("Jaws  (1975)") == "Jaws (1975)"


def test_a_turn_becomes_a_crs_prompt_row(tmp_path):
    folder = write_dir(tmp_path, [GOOD])
    fmt, loaded = load(folder)  # a directory: the id maps in it are not read as rows
    assert fmt == "crs_turns" and not loaded.rejected
    [ex] = loaded.examples
    assert ex.id == "crs-d1-2" and ex.group == "crs-d1" and ex.reference == GOOD["resp"]
    # the last context utterance is the seeker's; roles alternate before it
    assert [t["role"] for t in ex.prompt] == ["user", "assistant", "user"]
    assert ex.meta["gold_movies"] == ["Alien"]
    # the genre entity is not an item, so not a movie the reply could be credited for
    assert ex.meta["movies"] == {"3": "Alien", "1": "Police Academy (1984)"}
    assert recommendation_score("Try Alien, it is great!", ex.to_prompt_row()) == 1.0


def test_without_item_list_the_context_and_entity_names_still_give_movies(tmp_path):
    row = {**GOOD, "entity": [], "entity_name": ["Police Academy (1984)", "Comedy"]}
    folder = write_dir(tmp_path, [row], items=None)
    _, loaded = load(folder / "train_data.jsonl")
    [ex] = loaded.examples
    movies = set(ex.meta["movies"].values())
    assert {"Alien", "Police Academy (1984)"} <= movies and "Comedy" not in movies


def test_entities_given_as_uris_or_names_need_no_map(tmp_path):
    row = {
        **GOOD,
        "rec": ["Heat (1995)"],
        "entity": [DBP.format("Jaws_(1975_film)"), DBP.format("Comedy")],
        "entity_name": [],
    }
    folder = write_dir(tmp_path, [row], items=None)
    (folder / "entity2id.json").unlink()
    _, loaded = load(folder)
    [ex] = loaded.examples
    assert ex.meta["gold_movies"] == ["Heat (1995)"]
    # the film is a movie of the dialogue, the genre is not
    assert sorted(ex.meta["movies"].values()) == ["Heat (1995)", "Jaws (1975)"]


def test_catalogue_json_or_csv_names_ids_the_maps_lack(tmp_path):
    row = {**GOOD, "rec": [77], "entity": []}
    folder = write_dir(tmp_path, [row], items=None)
    (tmp_path / "cat.json").write_text(json.dumps({"77": "Heat  (1995)"}))
    (tmp_path / "cat.csv").write_text("movieId,movieName,nbMentions\n77,Heat (1995),3\n")
    for cat in ("cat.json", "cat.csv"):
        _, loaded = load(folder / "train_data.jsonl", catalogue=str(tmp_path / cat))
        assert [ex.meta["gold_movies"] for ex in loaded.examples] == [["Heat (1995)"]]
    assert load_catalogue(str(tmp_path / "cat.json")).name("77") == "Heat (1995)"
    (tmp_path / "bad.json").write_text(json.dumps({"77": [1]}))
    with pytest.raises(DataError, match=r"bad\.json: data\.catalogue: '77' maps to \[1\]"):
        load_catalogue(str(tmp_path / "bad.json"))


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"resp": None}, MISSING_FIELD, "resp"),
        ({"rec": 3}, WRONG_TYPE, "rec"),
        ({"rec": [999]}, UNKNOWN_ID, "rec[0]"),
        ({"rec": [2]}, UNKNOWN_ID, "rec[0]"),  # a genre: named, but not an item
        ({"entity": [1, 555]}, UNKNOWN_ID, "entity[1]"),
        ({"context": []}, BAD_TRANSCRIPT, "context"),
        ({"context": ["hi", 3]}, WRONG_TYPE, "context[1]"),
    ],
)
def test_bad_rows_land_in_invalid_with_their_reason(tmp_path, change, reason, field):
    ok = [{**GOOD, "turn_id": t, "resp": f"Try Alien, take {t}."} for t in range(9)]
    folder = write_dir(tmp_path, [*ok, {**GOOD, "turn_id": 99, **change}])
    _, loaded = load(folder)
    assert len(loaded.examples) == 9
    [bad] = loaded.rejected
    assert (bad.reason, bad.field, bad.origin.line) == (reason, field, 10)
    assert bad.origin.source.endswith("train_data.jsonl")


def test_e2e_prepare_preference_on_crs_turns(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models.materialise_policy(
        str(tiny_models["policy"]), tmp_path / "models/base/policy", "float32", None
    )
    rows = [{**GOOD, "dialog_id": f"d{i}", "resp": f"Try Alien {i}!"} for i in range(8)]
    rows.append({**GOOD, "dialog_id": "bad", "rec": [999]})
    write_dir(tmp_path, rows)
    data = {
        "source": "ecr",
        "sample_max_new_tokens": 3,
        "sample_batch_size": 8,
        "unfinished_samples": "keep",
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data, "task": {"name": "crs"}}))
    result = CliRunner().invoke(app, ["prepare_preference", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics/full/prepare_preference.json").read_text())
    assert metrics["data/format"] == "crs_turns" and metrics["invalid/unknown_id"] == 1
    prompts = [r for s in ("train", "valid", "test") for r in read_jsonl(f"data/prompts/{s}.jsonl")]
    assert len(prompts) == 8 and all(r["meta"]["gold_movies"] == ["Alien"] for r in prompts)
    [bad] = read_jsonl("data/invalid/train_data.jsonl")
    assert (bad["reason"], bad["field"], bad["line"]) == (UNKNOWN_ID, "rec[0]", 9)


def test_e2e_analyze_rewards_on_crs_turns(tmp_path, monkeypatch):
    """Through the real CLI: the gold names of crs_turns rows make every bad kind, the swapped
    movie included (other_movie), and the reference wins."""
    monkeypatch.chdir(tmp_path)
    rows = [
        {**GOOD, "dialog_id": f"d{i}", "resp": f"You would like Alien, take {i}.", "entity": [1, 4]}
        for i in range(4)
    ]
    rows = [{**r, "entity_name": ["Police Academy (1984)", "Jaws"]} for r in rows]
    write_dir(tmp_path, rows)
    Path("params.yaml").write_text("task:\n  name: crs\n")
    args = ["analyze_rewards", "--task", "crs", "--input", "ecr/train_data.jsonl"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = json.loads(Path("metrics/analyze_rewards.json").read_text())
    assert m["analyze/rows"] == 4 and m["analyze/good/crs/recommendation"] == 1.0
    assert m["analyze/pairs_by_kind/other_movie"] == 4
    # swapping Alien for a dialogue movie that is not gold earns only the partial credit
    assert m["analyze/gap_by_kind/other_movie"] == pytest.approx(0.7)
