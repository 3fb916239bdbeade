"""DVC runs that collide or die: two `dvc repro` of one workspace at once, and `dvc exp run` or
a `dvc queue` worker killed by SIGKILL mid-stage. The workspace ends consistent, nothing is
lost, no temporary sibling is left behind, and the next run completes.

A small DAG (track_inputs → prepare_models, prepare_preference → train_sft) of the tiny
profile keeps this tier's runtime modest; the pause and the kill land while train_sft renames
its outputs in, the last moment of a stage's run (the ``sitecustomize`` hook of
test_durable_outputs.py, loaded by DVC and by the stage it starts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import REPO
from ..test_e2e_dvc import DVC, make_tiny_repo
from .test_durable_outputs import _leftovers, _tree, fault_env  # noqa: F401

STAGE = "train_sft"
OUTPUTS = ("models/sft", "plots/train_sft", "metrics/train_sft.json")


def _env(env: dict[str, str], fault: str = "") -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}", RLHF_LAB_TEST_FAULT=fault)


def _dvc(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DVC, *args], cwd=root, env=_env(env), capture_output=True, text=True, timeout=600
    )


def _ok(root: Path, env: dict[str, str], *args: str) -> str:
    out = _dvc(root, env, *args)
    assert out.returncode == 0, f"dvc {' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _start_paused(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """``dvc *args`` in its own process group, held just before train_sft publishes models/sft
    (the first of its outputs to be renamed in)."""
    proc = subprocess.Popen(
        [*DVC, *args],
        cwd=root,
        env=_env(env, fault="pause_before:sft"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    paused = Path(env["RLHF_LAB_TEST_FAULT_DIR"]) / "paused"
    deadline = time.monotonic() + 600
    while not paused.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dvc {' '.join(args)} never reached the pause:\n{proc.communicate()[0]}")
        time.sleep(0.2)
    return proc


def _group(pgid: int) -> list[int]:
    """The processes (zombies included) of process group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        if entry.name.isdigit() and int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            found.append(int(entry.name))
    return found


def _outputs(root: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for rel in OUTPUTS:
        path = root / rel
        found |= {rel: path.read_bytes()} if path.is_file() else _tree(path)
    return found


def _without_timings(outputs: dict[str, bytes]) -> dict[str, object]:
    """``outputs`` with the metrics file's ``perf/*`` values (timings, memory) left out."""
    metrics = json.loads(outputs["metrics/train_sft.json"])
    return outputs | {
        "metrics/train_sft.json": {k: v for k, v in metrics.items() if "perf/" not in k}
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The tiny repo with train_sft and its upstream reproduced and committed (with this
    project's ignore files: temporary siblings and .rlhf-lab/ are never committed)."""
    root = make_tiny_repo(tmp_path_factory.mktemp("dvc-runs") / "repo")
    for name in (".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    _ok(root, env, "repro", STAGE)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "baseline")
    return root


@pytest.fixture
def workspace(baseline, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(baseline, root, symlinks=True)
    return root


def _status(root: Path, env: dict[str, str]) -> dict:
    return json.loads(_ok(root, env, "status", "--json", STAGE))


def test_two_dvc_repro_at_once(workspace, fault_env):  # noqa: F811
    root, env = workspace, fault_env
    before = _outputs(root)
    first = _start_paused(root, env, "repro", "--force", "--single-item", STAGE)
    try:
        # The first holds DVC's lock on train_sft's outputs while its command runs: the
        # second stops before touching them, with DVC's one ERROR line naming the busy path.
        second = _dvc(root, env, "repro", "--force", "--single-item", STAGE)
        log = second.stdout + second.stderr
        errors = [line for line in log.splitlines() if line.startswith("ERROR")]
        assert second.returncode != 0 and "Traceback" not in log, log
        assert len(errors) == 1 and "is busy, it is being blocked by:" in errors[0], log
        assert f"(PID {first.pid})" in log, log
    finally:
        (Path(env["RLHF_LAB_TEST_FAULT_DIR"]) / "go").touch()
        out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    # Consistent: dvc.lock matches what is on disk, the same model as before (same params and
    # seed), nothing left behind; and the next run completes.
    assert _status(root, env) == {}  # train_sft and what it depends on are up to date
    assert _without_timings(_outputs(root)) == _without_timings(before)
    assert _leftovers(root) == []
    _ok(root, env, "repro", STAGE)
    assert _status(root, env) == {}  # train_sft and what it depends on are up to date


def test_sigkill_of_dvc_exp_run_mid_stage(workspace, fault_env):  # noqa: F811
    root, env = workspace, fault_env
    before = _outputs(root)
    run = ("exp", "run", "-S", "sft.lr=0.0003", STAGE)
    proc = _start_paused(root, env, *run)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60  # the stage's process is reaped by init, not by us
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group(proc.pid)  # a zombie would still hold DVC's lock (its pid "exists")

    # DVC deletes a stage's outputs before running it (they are in its cache and in git), so
    # they are missing, never half-written; the killed stage's complete, unpublished outputs
    # are hidden temporary siblings of a dead pid.
    assert not any((root / rel).exists() for rel in OUTPUTS)
    assert sorted(p.split("-")[0] for p in _leftovers(root)) == [
        "metrics/.train_sft.json.tmp",
        "metrics/full/.train_sft.json.tmp",
        "models/.sft.tmp",
        "plots/.train_sft.tmp",
    ]
    # Nothing lost: git and the DVC cache give the previous outputs back, byte for byte.
    _git(root, "restore", "plots", "metrics")
    _ok(root, env, "checkout", STAGE)
    assert _outputs(root) == before

    # The same experiment again: it completes, cleans up what the killed run left, and the
    # workspace matches its dvc.lock.
    _ok(root, env, *run)
    assert _leftovers(root) == []
    assert _status(root, env) == {}  # train_sft and what it depends on are up to date
    curves = _tree(root / "plots/train_sft")
    assert {"metrics.json", *(f"plots/metrics/{c}.tsv" for c in ("train/loss", "train/lr"))} <= {
        *curves
    }
    assert json.loads(curves["metrics.json"])["step"] >= 1
    assert "0.0003" in _ok(root, env, "exp", "show", "--json")


WORKER_PIDFILE = ".dvc/tmp/exps/celery/dvc-exp-worker-1.pid"  # dvc-task's ManagedProcess


def _queue(root: Path, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """``dvc queue status`` as ``{experiment name: task status}``, and its worker line."""
    out = _ok(root, env, "queue", "status")
    rows = re.findall(r"^[0-9a-f]{7}\s+(\S+)\s.*\s(\S+)\s*$", out, flags=re.MULTILINE)
    workers = [line for line in out.splitlines() if line.startswith("Worker status:")]
    return dict(rows), "".join(workers)


def _dvc_logged(
    root: Path, env: dict[str, str], log: Path, *args: str, fault: str = ""
) -> tuple[int, str]:
    """``dvc *args`` with its output in the file ``log``, not a pipe: a command that starts a
    queue worker forks a daemon that keeps its stdout open for as long as the worker runs."""
    with log.open("w") as out:
        cmd = [*DVC, *args]
        rc = subprocess.run(
            cmd, cwd=root, env=_env(env, fault), stdout=out, stderr=subprocess.STDOUT, timeout=600
        ).returncode
    return rc, log.read_text()


def _running_in(root: Path) -> list[int]:
    """The processes whose working directory is ``root`` or inside it, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # not a process, another user's, or gone meanwhile
        if entry.name.isdigit() and (cwd == root or root in cwd.parents):
            found.append(int(entry.name))
    return found


def _wait_gone(pgid: int) -> None:
    deadline = time.monotonic() + 60  # reaped by init, not by us: DVC detached them
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group(pgid), pgid


def _worker_group(root: Path) -> int | None:
    """The process group of the queue's worker, if it runs: dvc-task gives it a group of its
    own, which the task it runs (``dvc exp exec-run``) and that task's stage inherit."""
    try:
        pgid = os.getpgid(int((root / WORKER_PIDFILE).read_text()))
    except (OSError, ValueError):
        return None  # never started, or gone
    assert pgid != os.getpgid(0)  # never this test's own group
    return pgid


def _exp(root: Path, env: dict[str, str], name: str) -> dict:
    """The data of experiment ``name`` in ``dvc exp show --json``."""
    for commit in json.loads(_ok(root, env, "exp", "show", "--json")):
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] == name:
                    return rev["data"]
    raise AssertionError(f"no experiment {name!r} in dvc exp show")


def test_sigkill_of_dvc_queue_worker_mid_stage(workspace, fault_env, tmp_path):  # noqa: F811
    root, env = workspace.resolve(), fault_env
    if _dvc(root, env, "queue", "status").returncode != 0:
        pytest.skip("`dvc queue` is unavailable in this DVC install")
    before = _outputs(root)
    queue = ("exp", "run", "--queue", "-S", "sft.lr=0.0007")
    _ok(root, env, *queue, "--name", "killed", STAGE)
    try:
        # The worker inherits this environment, and the stage it runs holds before publishing.
        rc, log = _dvc_logged(
            root, env, tmp_path / "start.log", "queue", "start", fault="pause_before:sft"
        )
        assert rc == 0, log
        paused = Path(env["RLHF_LAB_TEST_FAULT_DIR"]) / "paused"
        deadline = time.monotonic() + 600
        while not paused.exists():
            if time.monotonic() > deadline:
                logs = [p.read_text() for p in sorted((root / ".dvc/tmp/exps").rglob("*.out"))]
                pytest.fail("the queued train_sft never reached the pause:\n" + "\n".join(logs))
            time.sleep(0.2)
        pgid = _worker_group(root)
        assert pgid is not None
        # One group holds everything the queue runs here: the worker, its task, the stage.
        assert set(_running_in(root)) <= set(_group(pgid)), _running_in(root)
        os.killpg(pgid, signal.SIGKILL)
        _wait_gone(pgid)
        assert _running_in(root) == []

        # The run was in DVC's temporary copy: the workspace is untouched, byte for byte, and
        # nothing of the killed stage is in it.
        copies = sorted((root / ".dvc/tmp/exps").glob("tmp*"))
        assert _outputs(root) == before
        assert [p for p in _leftovers(root) if not p.startswith(".dvc/tmp/exps/")] == []
        assert _status(root, env) == {}  # train_sft and what it depends on are up to date
        git = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
        assert git.stdout == b""

        # DVC does not notice the death: the task stays Running with no worker until
        # `dvc queue kill` marks it Failed; `dvc queue remove --failed` drops it.
        assert _queue(root, env) == ({"killed": "Running"}, "Worker status: 0 active, 0 idle")
        killed = _dvc(root, env, "queue", "kill", "killed")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert "had already aborted unexpectedly" in killed.stderr, killed.stderr
        assert _queue(root, env)[0] == {"killed": "Failed"}
        _ok(root, env, "queue", "remove", "--failed")
        assert _queue(root, env)[0] == {}

        # DVC's temporary copy stays, with the killed stage's complete, unpublished outputs
        # as temporary siblings of a dead pid (docs/crash-safety.md: the user deletes it).
        assert len(copies) == 1, copies
        left = {p.split("-")[0] for p in _leftovers(copies[0])}
        assert {"models/.sft.tmp", "plots/.train_sft.tmp", "metrics/.train_sft.json.tmp"} <= left

        # The same experiment queued again runs to the end through a fresh worker.
        _ok(root, env, *queue, "--name", "rerun", STAGE)
        # `--run-all` starts a worker and follows the task's log until it ends.
        rc, log = _dvc_logged(root, env, tmp_path / "run-all.log", "exp", "run", "--run-all")
        assert rc == 0 and "Failed to reproduce" not in log, log
        assert _queue(root, env)[0] == {"rerun": "Success"}
        data = _exp(root, env, "rerun")
        assert data["params"]["params.yaml"]["data"]["sft"]["lr"] == 0.0007
        headline = json.loads(before["metrics/train_sft.json"])
        assert data["metrics"]["metrics/train_sft.json"]["data"].keys() == headline.keys()
        # Still nothing in the workspace, and the stale copy is still DVC's leftover.
        assert _outputs(root) == before
        assert [p for p in _leftovers(root) if not p.startswith(".dvc/tmp/exps/")] == []
        assert sorted((root / ".dvc/tmp/exps").glob("tmp*")) == copies

        # The worker idles for a minute after the queue empties: stop it the way DVC says.
        pgid = _worker_group(root)
        _ok(root, env, "queue", "stop")
        if pgid is not None:
            _wait_gone(pgid)
    finally:
        if (pgid := _worker_group(root)) is not None:  # a failure above: leave nothing running
            os.killpg(pgid, signal.SIGKILL)
