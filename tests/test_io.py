"""rlhf_lab.io: crash-safe replacement, leftover recovery, --out claims and stage locks (in
process; tests/faults/test_durable_outputs.py kills and starves real stage subprocesses)."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from rlhf_lab import io
from rlhf_lab.errors import ConfigError, StageBusyError


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _json(path):
    return json.loads(path.read_text())


def _write_dir(target, text):
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text(text)


def test_atomic_dir_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    _write_dir(target, "one")
    _write_dir(target, "two")
    assert (target / "a.txt").read_text() == "two"
    assert _siblings(tmp_path) == []


def test_atomic_dir_keeps_the_old_output_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    _write_dir(target, "one")
    with pytest.raises(RuntimeError), io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    assert _siblings(tmp_path) == []


def test_a_failed_rename_restores_the_old_output_and_drops_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write_dir(target, "one")
    real_rename = os.rename

    def failing(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="No space"):
        _write_dir(target, "two")
    assert (target / "a.txt").read_text() == "one"
    assert _siblings(tmp_path) == []


def test_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.fspath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    target = tmp_path / "out"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("x")
    tmp_name = os.fspath(tmp)
    publish = events.index(("rename", os.fspath(target)))
    synced = [path for kind, path in events[:publish] if kind == "fsync"]
    assert synced == [f"{tmp_name}/a.txt", tmp_name]  # the file, then its folder
    assert events[publish + 1] == ("fsync", os.fspath(tmp_path))  # then the parent


def test_recover_restores_an_output_a_killed_swap_moved_aside(tmp_path):
    target = tmp_path / "out"
    dead = _dead_pid()
    # killed between "rename target aside" and "rename temp in"
    (tmp_path / f".out.old-{dead}-abcd").mkdir()
    (tmp_path / f".out.old-{dead}-abcd" / "a.txt").write_text("one")
    (tmp_path / f".out.tmp-{dead}-efgh").mkdir()
    _write_dir(tmp_path / "other", "unrelated")  # another target's files are not touched
    io.recover(target)
    assert (target / "a.txt").read_text() == "one"
    assert _siblings(tmp_path) == []
    assert (tmp_path / "other" / "a.txt").read_text() == "unrelated"


def test_recover_removes_dead_leftovers_but_not_a_live_writers(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    dead, live = _dead_pid(), os.getppid()
    for name in (
        f".metrics.json.tmp-{dead}-x",
        ".metrics.json.tmp-oldstyle",
        f".metrics.json.old-{dead}-y",
    ):
        (tmp_path / name).write_text("stale")
    (tmp_path / f".metrics.json.tmp-{live}-z").write_text("being written")
    io.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert _siblings(tmp_path) == [f".metrics.json.tmp-{live}-z"]


def test_atomic_file_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    io.write_jsonl(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        io.write_jsonl(target, rows())
    assert io.read_jsonl(target) == [{"a": 1}]
    assert _siblings(tmp_path) == []


def test_stage_outputs_publish_together_at_the_end_of_the_block(tmp_path):
    model, metrics, other = tmp_path / "model", tmp_path / "m.json", tmp_path / "other.json"
    _write_dir(model, "old")
    io.write_json(metrics, {"v": 0})
    with io.stage_outputs(model, metrics):
        _write_dir(model, "new")
        io.write_json(metrics, {"v": 1})
        io.write_json(metrics, {"v": 2})  # written twice: the later write wins
        io.write_json(other, {"v": 3})  # not listed: published at once, as outside a block
        assert (model / "a.txt").read_text() == "old"
        assert _json(metrics) == {"v": 0}
        assert _json(other) == {"v": 3}
    assert (model / "a.txt").read_text() == "new"
    assert _json(metrics) == {"v": 2}
    assert _siblings(tmp_path) == []


def test_stage_outputs_change_nothing_when_the_block_fails(tmp_path):
    model, metrics = tmp_path / "model", tmp_path / "m.json"
    _write_dir(model, "old")
    io.write_json(metrics, {"v": 0})
    with pytest.raises(RuntimeError), io.stage_outputs(model, metrics):
        _write_dir(model, "new")  # complete, then the stage fails
        with io.atomic_file(metrics) as fh:  # still being written when it fails
            fh.write("{")
            raise RuntimeError("too many invalid rows")
    assert (model / "a.txt").read_text() == "old"
    assert _json(metrics) == {"v": 0}
    assert _siblings(tmp_path) == []


def test_stage_outputs_sweep_a_dead_runs_leftovers_first(tmp_path):
    model = tmp_path / "model"
    _write_dir(model, "old")
    dead = tmp_path / f".model.tmp-{_dead_pid()}-x"
    dead.mkdir()
    with io.stage_outputs(model):
        assert _siblings(tmp_path) == []
    assert (model / "a.txt").read_text() == "old"


def test_claim_out_dir(tmp_path):
    io.claim_out_dir(tmp_path / "missing", "cmd")
    (tmp_path / "empty").mkdir()
    io.claim_out_dir(tmp_path / "empty", "cmd")
    ours = tmp_path / "ours"
    with io.atomic_dir(ours) as tmp:
        io.mark_out_dir(tmp, "cmd")
        (tmp / "summary.md").write_text("x")
    io.claim_out_dir(ours, "cmd")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "report.md").write_text("evaluate's")
    with pytest.raises(ConfigError) as info:
        io.claim_out_dir(tmp_path / "reports", "analyze_rewards")
    assert str(info.value) == (
        f"analyze_rewards: --out {tmp_path / 'reports'} is a non-empty folder that rlhf-lab did "
        "not create (no .rlhf-lab-output); it would be deleted, so choose a new or empty folder"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a link or not a folder"):
        io.claim_out_dir(tmp_path / "file", "cmd")


def test_claim_out_dir_refuses_the_working_folder_even_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ConfigError, match=f"--out {out} holds the working folder"):
            io.claim_out_dir(out, "cmd")


def test_stage_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with io.stage_lock("train_sft", tmp_path):
        with pytest.raises(StageBusyError) as info, io.stage_lock("train_sft", tmp_path):
            pass
        assert str(info.value).startswith(
            f"train_sft is already running in this checkout (pid {os.getpid()}, lock "
        )
        with io.stage_lock("train_ppo", tmp_path):  # another stage is not blocked
            pass
    with io.stage_lock("train_sft", tmp_path):  # released on exit
        pass


def test_remove_dir_is_all_or_nothing_and_sweeps_a_dead_removal(tmp_path):
    ckpt = tmp_path / "step-000002"
    (ckpt / "policy").mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    half = tmp_path / f".step-000002.tmp-{_dead_pid()}-abcd"  # a killed removal's remains
    half.mkdir()
    io.remove_dir(ckpt)
    assert list(tmp_path.iterdir()) == []
    io.remove_dir(ckpt)  # already gone: nothing to do


def test_finite_or_none_nulls_only_non_finite_floats():
    data = {"a": 1.5, "b": math.nan, "c": -math.inf, "d": 3, "e": None, "f": "nan"}
    assert io.finite_or_none(data) == {
        "a": 1.5,
        "b": None,
        "c": None,
        "d": 3,
        "e": None,
        "f": "nan",
    }


def test_read_jsonl_missing_ok_reads_a_missing_split_as_no_rows(tmp_path):
    assert io.read_jsonl(tmp_path / "valid.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        io.read_jsonl(tmp_path / "valid.jsonl")
    io.write_jsonl(tmp_path / "valid.jsonl", [{"id": "a"}, {"id": "b"}])
    assert io.read_jsonl(tmp_path / "valid.jsonl", missing_ok=True) == [{"id": "a"}, {"id": "b"}]
