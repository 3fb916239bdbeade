"""Nothing lost, nothing stale: real stage subprocesses killed mid-write, starved of disk space,
and run twice at once; then re-run to the result of an uninterrupted run.

Faults are injected from outside the production code: a ``sitecustomize`` put first on the
subprocess's PYTHONPATH wraps ``os.rename`` (SIGKILL or a pause right at one step of an output
swap) or ``open`` (ENOSPC on writes under one output's temp directory, or SIGKILL when a file
is opened for writing), chosen by ``RLHF_LAB_TEST_FAULT``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app

from ..ppo_helpers import (  # noqa: F401
    TINY_PPO,
    copy_policy,
    make_critic,
    make_reward_model,
    one_thread,
    write_prompts,
)
from ..test_analyze_rewards import DOC_ROWS

SITECUSTOMIZE = '''
import builtins, errno, io, os, signal, time

_FAULT = os.environ.get("RLHF_LAB_TEST_FAULT", "")
_KIND, _, _ARG = _FAULT.partition(":")
_DIR = os.environ.get("RLHF_LAB_TEST_FAULT_DIR", ".")

if _KIND in ("kill_before", "kill_after", "pause_before"):
    _rename = os.rename

    def rename(src, dst, *args, **kwargs):
        hit = os.path.basename(os.fspath(dst)).startswith(_ARG)
        if hit and _KIND == "kill_before":
            os.kill(os.getpid(), signal.SIGKILL)
        if hit and _KIND == "pause_before":
            open(os.path.join(_DIR, "paused"), "w").close()
            while not os.path.exists(os.path.join(_DIR, "go")):
                time.sleep(0.05)
        _rename(src, dst, *args, **kwargs)
        if hit and _KIND == "kill_after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename

if _KIND == "kill_on_open":
    _open_k = io.open

    def killing_open(file, mode="r", *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
        if any(c in mode for c in "wax+") and _ARG in os.path.abspath(name):
            os.kill(os.getpid(), signal.SIGKILL)
        return _open_k(file, mode, *args, **kwargs)

    builtins.open = io.open = killing_open

if _KIND == "enospc":
    _open = io.open

    class _Full:
        """A file on a full disk: half of the first write lands, then ENOSPC."""

        def __init__(self, fh, name):
            self._fh, self._name = fh, name

        def write(self, data):
            self._fh.write(data[: len(data) // 2])
            self._fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def full_open(file, mode="r", *args, **kwargs):
        fh = _open(file, mode, *args, **kwargs)
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
        if any(c in mode for c in "wax+") and _ARG in os.path.abspath(name):
            return _Full(fh, name)
        return fh

    builtins.open = io.open = full_open
'''


@pytest.fixture
def fault_env(tmp_path) -> dict[str, str]:
    hook = tmp_path / "fault-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = [str(hook), os.environ.get("PYTHONPATH", "")]
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        RLHF_LAB_TEST_FAULT_DIR=str(hook),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


def _start(root: Path, env: dict[str, str], *args: str, fault: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_lab.cli", *args, "--params", "params.yaml"],
        cwd=root,
        env=dict(env, RLHF_LAB_TEST_FAULT=fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(root: Path, env: dict[str, str], *args: str, fault: str = "") -> tuple[int, str]:
    proc = _start(root, env, *args, fault=fault)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def _cli(root: Path, *args: str) -> tuple[int, str]:
    """The same command in this process (no interpreter start-up): for the runs that are not
    themselves faulted."""
    cwd = Path.cwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, [*args, "--params", "params.yaml"])
    finally:
        os.chdir(cwd)
    return result.exit_code, result.output


def _errors(log: str) -> list[str]:
    # transformers' progress bars also reach stderr; the error is the lines rlhf-lab prints
    return [line for line in log.splitlines() if line.startswith("error:")]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name
    )


@pytest.fixture
def models_workspace(tiny_models, tmp_path) -> Path:
    root = tmp_path / "repo"
    for role in ("policy", "encoder"):
        shutil.copytree(tiny_models[role], root / "tiny-models" / role)
    models = {"policy": "tiny-models/policy", "encoder": "tiny-models/encoder"}
    (root / "params.yaml").write_text(yaml.safe_dump({"models": models}))
    return root


def test_sigkill_mid_swap_then_rerun_gives_the_uninterrupted_output(models_workspace, fault_env):
    root = models_workspace
    assert _cli(root, "prepare_models")[0] == 0
    reference = _tree(root / "models")

    # Killed after the old policy was moved aside and before the new one was renamed in: the
    # moment where the old code (rmtree, then rename) had already deleted the only copy.
    rc, log = _run(root, fault_env, "prepare_models", fault="kill_after:.policy.old-")
    assert rc == -signal.SIGKILL, log
    assert not (root / "models/base/policy").exists()
    # (the encoder, complete, waits to be renamed in with the policy: the stage's outputs are
    # published together at its end)
    assert [p.split("-")[0] for p in _leftovers(root)] == [
        "models/base/.encoder.tmp",
        "models/base/.policy.old",
        "models/base/.policy.tmp",
    ]
    assert _cli(root, "prepare_models")[0] == 0
    assert _tree(root / "models") == reference and _leftovers(root) == []

    # Killed with the new copy complete on disk but not yet published: the old one stays put.
    rc, log = _run(root, fault_env, "prepare_models", fault="kill_before:.policy.old-")
    assert rc == -signal.SIGKILL, log
    assert {k: v for k, v in _tree(root / "models").items() if "tmp-" not in k} == reference
    assert _cli(root, "prepare_models")[0] == 0
    assert _tree(root / "models") == reference and _leftovers(root) == []


def test_enospc_keeps_the_previous_output_and_says_so_in_one_line(models_workspace, fault_env):
    root = models_workspace
    assert _cli(root, "prepare_models")[0] == 0
    reference = _tree(root / "models")

    rc, log = _run(root, fault_env, "prepare_models", fault="enospc:/.policy.tmp-")
    assert rc == 2, log
    lines = _errors(log)
    assert len(lines) == 1 and "Traceback" not in log, log
    assert lines[0].startswith("error: prepare_models: no space left on device writing ")
    assert lines[0].endswith("its previous outputs are intact, free some space and run it again")
    assert _tree(root / "models") == reference and _leftovers(root) == []


def test_a_second_run_of_a_running_stage_is_refused(models_workspace, fault_env):
    root = models_workspace
    hook = Path(fault_env["RLHF_LAB_TEST_FAULT_DIR"])
    first = _start(root, fault_env, "prepare_models", fault="pause_before:policy")
    try:
        while not (hook / "paused").exists():  # the first run holds the lock, mid-publish
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        rc, log = _cli(root, "prepare_models")  # flock: another open file, so it conflicts
        lines = [line for line in log.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1, log
        assert lines[0].startswith(
            f"error: prepare_models is already running in this checkout (pid {first.pid}, "
        )
    finally:
        (hook / "go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert (root / "models/base/policy/model.safetensors").is_file()
    assert (root / "models/base/encoder/model.safetensors").is_file()
    assert _leftovers(root) == []


PPO_PARAMS = {
    "reward": {"weights": {"reward_model": 1.0}},
    "ppo": {**TINY_PPO, "save_every": 1},
}


@pytest.mark.usefixtures("one_thread")  # as the subprocess (OMP_NUM_THREADS=1): same floats
def test_sigkill_mid_checkpoint_save_then_resume_gives_the_uninterrupted_model(
    tiny_models, tmp_path, fault_env
):
    root = tmp_path / "repo"
    copy_policy(tiny_models["policy"], root / "models/sft")
    make_critic(root / "models/sft", root / "models/critic")
    make_reward_model(tiny_models["encoder"], root / "models/reward")
    write_prompts(root, 6)
    (root / "params.yaml").write_text(yaml.safe_dump(PPO_PARAMS))

    def result() -> tuple[dict[str, bytes], dict[str, float]]:
        metrics = json.loads((root / "metrics/full/train_ppo.json").read_text())
        return _tree(root / "models/ppo"), {
            k: v for k, v in metrics.items() if not k.startswith("time/")
        }

    rc, log = _cli(root, "train_ppo")
    assert rc == 0, log
    reference = result()
    shutil.rmtree(root / "models/ppo")
    (root / "metrics/full/train_ppo.json").unlink()

    # --fresh: the finished run's checkpoints match, so a plain run would just resume at 3/3
    rc, log = _run(root, fault_env, "train_ppo", "--fresh", fault="kill_before:step-000002")
    assert rc == -signal.SIGKILL, log
    ckpt = root / "checkpoints/train_ppo"
    assert [p.name.split("-")[0] for p in sorted(ckpt.iterdir())] == [".step", "step"]
    rc, log = _cli(root, "train_ppo", "--resume")
    assert rc == 0, log
    assert "resuming train_ppo at step 1/3" in log
    assert result() == reference
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000002", "step-000003"]
    assert _leftovers(root) == []


def test_analyze_rewards_refuses_to_replace_a_folder_it_did_not_create(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("task:\n  name: docstring\n")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOC_ROWS))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/report.md").write_text("evaluate's report\n")
    before = _tree(tmp_path)
    runner = CliRunner()
    refusals = {
        ".": "--out . holds the working folder",
        "reports": "--out reports is a non-empty folder that rlhf-lab did not create",
    }
    for out, why in refusals.items():
        result = runner.invoke(app, ["analyze_rewards", "--input", "rows.jsonl", "--out", out])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: analyze_rewards: {why}"), lines[0]
    assert _tree(tmp_path) == before

    # A folder it made itself (marked) is replaced on the next run, as before.
    for _ in range(2):
        result = runner.invoke(app, ["analyze_rewards", "--input", "rows.jsonl", "--out", "mine"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "mine/summary.md").is_file() and _leftovers(tmp_path) == []
