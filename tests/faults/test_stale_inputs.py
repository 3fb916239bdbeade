"""Stale inputs: the bytes behind a path in params change, and DVC must notice.

A tiny DVC repo with the real ``track_inputs`` stage (copied from dvc.yaml) and two stand-ins
for the stages that read its fingerprint files. Before ``track_inputs`` existed, editing
``data.source``'s file left every stage "up to date" and ``dvc repro`` reused stale outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rlhf_lab.config import documented_yaml, parse_params

from ..conftest import REPO
from ..test_e2e_dvc import DVC, _run

SOURCE = "raw/chats.jsonl"
WEIGHTS = "mymodels/policy/model.safetensors"


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "raw").mkdir(parents=True)
    (root / SOURCE).write_text('{"prompt": "hi", "chosen": "hello!", "rejected": "go away"}\n')
    (root / "mymodels/policy").mkdir(parents=True)
    (root / "mymodels/policy/config.json").write_text('{"model_type": "llama"}')
    (root / WEIGHTS).write_bytes(b"weights-1")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = {
        name: {
            "cmd": f"cp data/inputs/{name}.json seen_{name}.json",
            "deps": [f"data/inputs/{name}.json"],
            "outs": [f"seen_{name}.json"],
        }
        for name in ("source", "models")
    }
    spec = {"stages": {"track_inputs": stages["track_inputs"], **readers}}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # judge.model's default is the pipeline's models/base/policy, which this dvc.yaml lacks
    params = parse_params(
        {
            "models": {"policy": "mymodels/policy"},
            "data": {"source": SOURCE},
            "judge": {"backend": "none"},
        }
    )
    (root / "params.yaml").write_text(documented_yaml(params))
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "t@example.com"], root)
    _run(["git", "config", "user.name", "t"], root)
    _run([*DVC, "init", "-q"], root)
    _run([*DVC, "config", "core.analytics", "false"], root)
    # the stages need a commit to run in (dvclive records it): commit the source, then its run
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "tiny"], root)
    _run([*DVC, "repro"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "tiny run"], root)
    return root


def _status(root: Path) -> dict:
    return json.loads(_run([*DVC, "status", "--json"], root).stdout)


# track_inputs reruns on every repro: `dvc status` always lists it so (DVC's documented
# behaviour for always_changed), and that alone means "nothing stale".
CLEAN = {"track_inputs": ["always changed"]}


def test_edited_input_bytes_make_exactly_their_reader_stale(repo):
    assert _status(repo) == CLEAN
    original = (repo / SOURCE).read_bytes()
    (repo / SOURCE).write_bytes(original.replace(b"hello!", b"HELLO!"))  # same path, same size
    _run([*DVC, "repro", "--single-item", "track_inputs"], repo)
    assert _status(repo) == {
        **CLEAN,
        "source": [{"changed deps": {"data/inputs/source.json": "modified"}}],
    }  # the model reader is untouched
    (repo / SOURCE).write_bytes(original)
    _run([*DVC, "repro", "--single-item", "track_inputs"], repo)
    assert _status(repo) == CLEAN
    # new weights in the same local model dir: repro reruns its reader, and only that one
    (repo / WEIGHTS).write_bytes(b"weights-2")
    out = _run([*DVC, "repro"], repo).stdout
    assert "Running stage 'models'" in out and "Running stage 'source'" not in out
    seen = json.loads((repo / "seen_models.json").read_text())
    assert seen["models.policy"]["kind"] == "local_dir"
    assert seen == json.loads((repo / "data/inputs/models.json").read_text())
    assert _status(repo) == CLEAN


def test_a_moved_clone_has_byte_identical_fingerprints(repo, tmp_path):
    clone = tmp_path / "elsewhere/deeper/clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    # the fingerprints are committed with the inputs; the clone must rebuild the same bytes
    shutil.rmtree(clone / "data/inputs")
    _run([*DVC, "repro", "--single-item", "track_inputs"], clone)
    for name in ("models", "source", "catalogue", "judge"):
        rel = f"data/inputs/{name}.json"
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert str(tmp_path) not in (clone / "data/inputs/models.json").read_text()
