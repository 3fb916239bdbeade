"""train_ppo killed mid checkpoint save, re-run; resumes refused when an input changed; a fresh
run keeps the old checkpoints until it has saved its own first one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.config import PpoConfig
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer

from ..ppo_helpers import (  # noqa: F401
    TINY_LORA,
    TINY_PPO,
    copy_policy,
    make_critic,
    make_reward_model,
    one_thread,
    prompt_rows,
    write_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = {
    "reward": {"weights": {"reward_model": 1.0, "text/length": 0.5}, "length_band": [2, 8]},
    "ppo": {**TINY_PPO, "save_every": 1, "lr": 1e-3},
}
# Runs train_ppo and SIGKILLs it inside the save of its second checkpoint: after the policy
# adapter is written into the temporary directory, before the critic.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, torch
    torch.set_num_threads(1)
    import rlhf_lab.ppo.checkpoint as trainer
    from rlhf_lab.cli import app

    real, calls = trainer.save_critic, []
    def save_critic(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    trainer.save_critic = save_critic
    app(["train_ppo", "--params", "params.yaml"])
    """
)


def _invoke(*args):
    return CliRunner().invoke(app, [*args, "--params", "params.yaml"])


def _last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


def _outputs(root):
    """What train_ppo publishes: the model's bytes and the metrics (timings aside)."""
    metrics = json.loads((root / "metrics/full/train_ppo.json").read_text())
    return (
        (root / "models/ppo/model.safetensors").read_bytes(),
        {k: v for k, v in metrics.items() if not k.startswith("time/")},
    )


@pytest.fixture
def workspaces(tiny_models, tmp_path):
    first = tmp_path / "a"
    copy_policy(tiny_models["policy"], first / "models/sft", embed_scale=4.0)
    make_critic(first / "models/sft", first / "models/critic")
    make_reward_model(tiny_models["encoder"], first / "models/reward")
    write_prompts(first, 6)
    (first / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    shutil.copytree(first, tmp_path / "b")
    return first, tmp_path / "b"


def test_killed_mid_checkpoint_then_rerun_equals_uninterrupted(workspaces, monkeypatch):
    full, killed = workspaces
    monkeypatch.chdir(full)
    assert _invoke("train_ppo").exit_code == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN], cwd=killed, env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ckpts = killed / "checkpoints/train_ppo"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000001"]
    assert [p.name[:17] for p in ckpts.glob(".step-000002.tmp-*")] == [".step-000002.tmp-"]
    assert not (killed / "models/ppo").exists()

    # The natural re-run (what `dvc repro` runs) continues the complete checkpoint.
    monkeypatch.chdir(killed)
    result = _invoke("train_ppo")
    assert result.exit_code == 0, result.output
    assert "resuming train_ppo at step 1/3" in result.output
    assert _outputs(killed) == _outputs(full)
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000003"]

    # Without a weight schedule ppo.steps may grow: --resume continues the last checkpoint.
    params = {**PARAMS, "ppo": {**PARAMS["ppo"], "steps": 4}}
    (killed / "params.yaml").write_text(yaml.safe_dump(params))
    result = _invoke("train_ppo", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming train_ppo at step 3/4" in result.output
    assert json.loads((killed / "metrics/full/train_ppo.json").read_text())["train/steps"] == 4


def _reweight(root):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["reward"]["weights"]["text/length"] = 0.25
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_reweight, "reward.weights.text/length changed (checkpoint 0.5 vs now 0.25)"),
        (lambda root: write_prompts(root, 5), "data/grounded/train.jsonl changed (checkpoint "),
        (
            lambda root: make_critic(root / "models/sft", root / "models/critic", seed=1),
            "models/critic changed (checkpoint ",
        ),
    ],
    ids=["reward.weights", "prompts", "critic"],
)
def test_resume_refuses_a_changed_input_in_one_line(workspaces, monkeypatch, change, message):
    root, _ = workspaces
    monkeypatch.chdir(root)
    params = {**PARAMS, "ppo": {**PARAMS["ppo"], "steps": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert _invoke("train_ppo").exit_code == 0
    change(root)

    result = _invoke("train_ppo", "--resume")
    assert result.exit_code == 2
    line = _last_line(result)
    assert line.startswith("error: checkpoints/train_ppo: cannot resume: " + message), line
    assert line.endswith("run without --resume to start over, or delete the directory")
    assert (root / "checkpoints/train_ppo/step-000001/state.json").is_file()


def _trainer(dirs, ckpt, fingerprint, scorer_fn, steps=2):
    cfg = PpoConfig(
        steps=steps,
        batch_size=4,
        minibatches=2,
        epochs=1,
        max_new_tokens=4,
        save_every=1,
        lora=TINY_LORA,
    )
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(dirs / "sft", dirs / "critic", cfg.lora, cfg.temperature)
    scorer = CompositeScorer({"len": scorer_fn}, {"len": 1.0}, total_steps=cfg.steps)
    return PpoTrainer(
        model,
        prompt_rows(4),
        scorer,
        cfg,
        checkpoint_dir=ckpt,
        progress=False,
        fingerprint=fingerprint,
    )


def test_fresh_run_keeps_old_checkpoints_until_its_first_save(tiny_models, tmp_path):
    copy_policy(tiny_models["policy"], tmp_path / "sft")
    make_critic(tmp_path / "sft", tmp_path / "critic")
    ckpt = tmp_path / "ckpt"

    def length(replies, rows):
        return [len(r) / 20 for r in replies]

    _trainer(tmp_path, ckpt, {"prompts": "a"}, length).train()
    old = {p.name: (p / "state.json").read_text() for p in ckpt.iterdir()}
    assert sorted(old) == ["step-000001", "step-000002"]

    def crash(replies, rows):
        raise KeyboardInterrupt  # killed during step 0, before any checkpoint

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, ckpt, {"prompts": "b"}, crash).train()
    assert {p.name: (p / "state.json").read_text() for p in ckpt.iterdir()} == old

    # the old run is still resumable; the new one refuses to continue it
    with pytest.raises(
        RlhfLabError, match=r"cannot resume: prompts changed \(checkpoint a vs now b\)"
    ):
        _trainer(tmp_path, ckpt, {"prompts": "b"}, length).train(resume=True)
    resumed = _trainer(tmp_path, ckpt, {"prompts": "a"}, length)
    resumed.train()
    assert resumed.history and len(resumed.history) == 2  # replayed, nothing re-run

    # once the new run has saved, only its checkpoints remain
    new = _trainer(tmp_path, ckpt, {"prompts": "b"}, length)
    new.train()
    states = [json.loads((p / "state.json").read_text()) for p in sorted(ckpt.iterdir())]
    assert [s["fingerprint"]["prompts"] for s in states] == ["b", "b"]

    # fewer steps: the newest checkpoint ran past them, the older one is exactly this run
    shorter = _trainer(tmp_path, ckpt, {"prompts": "b"}, length, steps=1)
    shorter.train(resume=True)
    assert shorter.step == 1 and shorter.history == new.history[:1]
    assert shorter._mismatch(ckpt / "step-000002") == [
        "ppo.steps changed (checkpoint at step 2 vs now 1)"
    ]
