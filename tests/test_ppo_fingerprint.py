"""The run fingerprint's pure pieces: flattening, digests that follow content not location,
and the change list the one-line resume error is made of."""

from __future__ import annotations

import shutil

from rlhf_lab.config import Params
from rlhf_lab.ppo import fingerprint as fp


def test_flatten_nested_sections_to_dotted_leaves():
    tree = {"reward": {"weights": {"judge": 0.5, "text/length": 1.0}, "band": [1, 2]}, "x": {}}
    assert fp.flatten(tree) == {
        "reward.weights.judge": 0.5,
        "reward.weights.text/length": 1.0,
        "reward.band": [1, 2],
        "x": {},
    }


def test_dir_digest_follows_bytes_and_names_not_location(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "w.bin").write_bytes(b"\x00\x01")
    (a / "sub/c.json").write_text("{}")
    shutil.copytree(a, tmp_path / "elsewhere/b")
    assert fp.dir_digest(a) == fp.dir_digest(tmp_path / "elsewhere/b")
    (a / "w.bin").write_bytes(b"\x00\x02")  # same size, new weights
    assert fp.dir_digest(a) != fp.dir_digest(tmp_path / "elsewhere/b")
    (tmp_path / "elsewhere/b/sub/c.json").rename(tmp_path / "elsewhere/b/c.json")
    (a / "w.bin").write_bytes(b"\x00\x01")
    assert fp.dir_digest(a) != fp.dir_digest(tmp_path / "elsewhere/b")


def test_changes_name_each_key_with_both_values():
    old = {"reward.weights.judge": 0.0, "ppo.lr": 1e-4, "models/sft": "a" * 64, "gone": 1}
    new = {"reward.weights.judge": 0.5, "ppo.lr": 1e-4, "models/sft": "b" * 64, "added": [1]}
    found = fp.changes(old, new)
    assert found == [
        "added changed (checkpoint absent vs now [1])",
        "gone changed (checkpoint 1 vs now absent)",
        f"models/sft changed (checkpoint {'a' * 12} vs now {'b' * 12})",
        "reward.weights.judge changed (checkpoint 0.0 vs now 0.5)",
    ]
    assert fp.changes(old, new, ignore={"added", "gone", "models/sft"}) == found[3:]
    assert fp.summarise(found) == ", ".join(found[:3]) + ", and 1 more"
    assert fp.summarise(found[:1]) == found[0]


def test_stage_fingerprint_records_params_files_dirs_and_code(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "m").mkdir()
    (tmp_path / "m/w").write_bytes(b"1")
    got = fp.stage_fingerprint(
        Params(), files={"p.jsonl": tmp_path / "p.jsonl"}, dirs={"m": tmp_path / "m", "r": None}
    )
    assert got["reward.weights.reward_model"] == Params().reward.weights["reward_model"]
    assert got["task.name"] == Params().task.name
    assert got["data.catalogue"] is None and got["r"] is None
    assert len(got["p.jsonl"]) == len(got["m"]) == len(got[fp.CODE]) == 64
    assert not any(k.startswith("ppo.") for k in got)  # the trainer adds ppo
