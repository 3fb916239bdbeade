"""track_inputs through the real CLI: the fingerprint files, the digest cache, one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import yaml
from typer.testing import CliRunner

from rlhf_lab import inputs
from rlhf_lab.cli import app
from rlhf_lab.io import sha256_file

from .conftest import REPO


def test_track_inputs_writes_one_fingerprint_file_per_concern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a stage runs at the repo root: dvc.yaml says which paths are pipeline outputs
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"source": "raw/pairs.jsonl", "split": "test"}})
    )
    result = CliRunner().invoke(app, ["track_inputs", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "data/inputs").iterdir()}
    assert written == set(inputs.FILES)
    source = json.loads((tmp_path / "data/inputs/source.json").read_text())
    sha = sha256_file(tmp_path / "raw/pairs.jsonl")
    assert source == {
        "data.source": {"value": "raw/pairs.jsonl", "kind": "local_file", "sha256": sha},
        "data.format": "auto",
        "data.data_dir": None,
        "data.split": "test",
    }
    judge = json.loads((tmp_path / "data/inputs/judge.json").read_text())
    assert judge == {"judge.model": {"value": "models/base/policy", "kind": "pipeline_output"}}
    # the per-machine cache holds exactly the file hashed in this run
    cache = json.loads((tmp_path / inputs.DIGEST_CACHE).read_text())
    assert [v[2] for v in cache.values()] == [sha]
    assert list(cache) == [os.path.abspath("raw/pairs.jsonl")]


def test_a_missing_catalogue_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  catalogue: movies.csv\n")
    result = CliRunner().invoke(app, ["track_inputs", "--params", "params.yaml"])
    assert result.exit_code == 2
    assert "params.yaml: data.catalogue: 'movies.csv' is not a file" in result.output
    assert not (tmp_path / "data/inputs").exists()
