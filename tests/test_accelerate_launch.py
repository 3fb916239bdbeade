"""The distributed path: train_reward and train_ppo as 2 CPU processes under `accelerate launch`
(train_ppo compared with 1 process, and resumed), and the shipped accelerate configs parse."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from rlhf_lab import models
from rlhf_lab.errors import ConfigError
from rlhf_lab.ppo.distributed import DataParallel, check_sizes, shard
from rlhf_lab.ppo.trainer import batch_indices
from rlhf_lab.reward_scorer import RewardModel

from .conftest import REPO
from .ppo_helpers import TINY_PPO, copy_policy, make_critic, make_reward_model, write_prompts
from .test_train_reward import make_reward_workdir, toy_rows

CONFIGS = {
    "cpu.yaml": "NO",
    "single_gpu.yaml": "NO",
    "multi_gpu.yaml": "MULTI_GPU",
    "zero2.yaml": "DEEPSPEED",
    "zero3.yaml": "DEEPSPEED",
}


def _free_port() -> int:
    # Other test runs on the same machine may hold accelerate's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("name", "kind"), sorted(CONFIGS.items()))
def test_shipped_accelerate_configs_parse(name, kind):
    config = load_config_from_file(str(REPO / "accelerate" / name))
    assert config.distributed_type.value == kind
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[4])
    if name == "zero3.yaml":
        # without it the sharded weights cannot be gathered to save models/reward, models/sft
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def _launch(args, cwd, processes=2):
    """``accelerate launch`` on ``processes`` gloo CPU processes (see the train_reward test)."""
    cmd = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(REPO / "accelerate/multi_gpu.yaml")),
        *("--num_processes", str(processes), "--mixed_precision", "no"),
        *("--main_process_port", str(_free_port())),
        *args,
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    return log


def test_train_reward_on_two_cpu_processes(tiny_models, tmp_path):
    params = make_reward_workdir(tmp_path, tiny_models["encoder"])
    # The shipped multi-GPU config on a machine without a GPU: torchrun starts 2 processes and
    # the trainer falls back to accelerate's multi-CPU (gloo) mode. (`--cpu --num_processes 2`
    # starts only one process unless MPI is set up.)
    cmd = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(REPO / "accelerate/multi_gpu.yaml")),
        *("--num_processes", "2", "--mixed_precision", "no"),
        *("--main_process_port", str(_free_port())),
        *("-m", "rlhf_lab.cli", "train_reward", "--params", str(params)),
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log

    m = json.loads((tmp_path / "metrics/full/train_reward.json").read_text())
    assert m["perf/num_processes"] == 2
    # the global batch is split across processes, so the step count is the 1-process one
    assert m["train/steps"] == 4 * 128 // 16
    assert m["valid/pairs"] == 32 and m["valid/accuracy"] >= 0.9
    # saved once, by the main process: one summary, one curve point per step, no temp dirs
    assert len(re.findall(r"^\s*train_reward\s*$", log, flags=re.MULTILINE)) == 1
    loss_tsv = tmp_path / "plots/train_reward/plots/metrics/train/loss.tsv"
    assert len(loss_tsv.read_text().splitlines()) == 1 + m["train/steps"]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    prov = json.loads((tmp_path / "models/reward/provenance.json").read_text())
    assert prov["num_processes"] == 2

    rm = RewardModel(tmp_path / "models/reward")
    rows = toy_rows(32, 3, "check")
    prompts = [r["prompt"] for r in rows]
    chosen = rm.score(prompts, [r["chosen"] for r in rows])
    rejected = rm.score(prompts, [r["rejected"] for r in rows])
    assert (chosen > rejected).float().mean().item() >= 0.9


def test_trainer_falls_back_to_multi_cpu_only_without_gpu(monkeypatch):
    from rlhf_lab.training import common

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert common._launched_without_gpu()
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    assert not common._launched_without_gpu()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert not common._launched_without_gpu()


def test_docs_mention_every_shipped_config():
    docs = (REPO / "docs/accelerate.md").read_text()
    for name in CONFIGS:
        assert f"accelerate/{name}" in docs
    assert sorted(p.name for p in Path(REPO / "accelerate").glob("*.yaml")) == sorted(CONFIGS)


# ---------------------------------------------------------------------------------------------
# train_ppo
# ---------------------------------------------------------------------------------------------


def test_ppo_shards_are_contiguous_slices_of_the_global_batch():
    idx = batch_indices(3, 10, 8, seed=0)
    parts = [shard(idx, r, 4) for r in range(4)]
    assert [len(p) for p in parts] == [2, 2, 2, 2]
    assert [i for p in parts for i in p] == idx  # rank order = the 1-process order
    assert shard(idx, 0, 1) == idx


def test_ppo_batch_must_split_into_equal_minibatch_shares():
    check_sizes(16, 16, 2, 4)  # 4 prompts per process, 2 per minibatch
    check_sizes(4, 16, 2, 2)  # grpo: 2 prompts x 4 samples per process, 4 replies per minibatch
    for bad in ((16, 16, 2, 3), (4, 16, 2, 8), (2, 8, 2, 4)):
        with pytest.raises(ConfigError) as err:
            check_sizes(*bad)
        assert str(err.value).startswith(
            f"params.yaml: ppo.batch_size ({bad[0]}) must be divisible by the number of "
            f"processes ({bad[3]}), and batch_size × ppo.num_generations ({bad[1]}) by "
            f"processes × ppo.minibatches ({bad[2]})"
        )


def _collectives(rank, world, port, out):
    """Each rank of a 2-process gloo group: its rows of a known global batch through the
    DataParallel collectives; results saved for the parent to check."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from rlhf_lab.ppo.core import masked_mean, masked_whiten

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    acc = SimpleNamespace(
        distributed_type="MULTI_CPU", num_processes=world, process_index=rank, device="cpu"
    )
    dp = DataParallel(acc)
    x, mask = _global_batch()
    # rank 0: rows 0-1 trimmed to width 3 (its own padding); rank 1: rows 2-4, width 4
    rows, width = ((slice(0, 2), 3), (slice(2, 5), 4))[rank]
    xs, ms = x[rows, :width], mask[rows, :width]
    whitened = dp.across(masked_whiten, xs, ms)
    (gx, gm) = dp.gather_rows(xs, ms)
    # a token-mean loss of a 1-parameter model, y = w * x: d/dw mean(w * x) = mean(x)
    w = torch.nn.Parameter(torch.tensor(2.0))
    tokens = float(ms.sum())
    scale, total = dp.loss_scale(tokens)
    loss = masked_mean(w * xs, ms)
    (loss * scale).backward()
    dp.average_gradients([w])
    (mean,) = dp.global_mean(tokens, total, loss.detach())
    torch.save(
        {"whitened": whitened, "gx": gx, "gm": gm, "grad": w.grad, "mean": mean, "total": total},
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _global_batch():
    x = torch.tensor(
        [
            [1.0, 2.0, 0.0, 0.0],
            [3.0, 4.0, 5.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [2.0, 2.0, 2.0, 2.0],
            [7.0, 1.0, 0.0, 0.0],
        ]
    )
    mask = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    ).float()
    return x, mask


def test_ppo_collectives_on_two_processes_equal_the_whole_batch(tmp_path):
    """Uneven shards (2 and 3 rows, widths 3 and 4): whitening, gathering, the token-weighted
    gradient and the logged mean equal the 1-process computation on the whole batch."""
    import torch.multiprocessing as mp

    from rlhf_lab.ppo.core import masked_mean, masked_whiten

    mp.spawn(_collectives, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    x, mask = _global_batch()
    expected = masked_whiten(x, mask)
    assert torch.allclose(r0["whitened"], expected[0:2, :3], atol=1e-6)
    assert torch.allclose(r1["whitened"], expected[2:5, :4], atol=1e-6)
    for r in (r0, r1):
        assert torch.equal(r["gx"], x) and torch.equal(r["gm"], mask)  # rank order, 0-padded
        # the gradient of the whole batch's token mean, 30 / 12 tokens = 2.5, not the mean of
        # the two shards' token means ((15 / 5 + 15 / 7) / 2 = 2.57)
        assert r["total"] == 12.0
        assert float(r["grad"]) == pytest.approx(30 / 12, rel=1e-6)
        assert float(r["mean"]) == pytest.approx(float(masked_mean(2.0 * x, mask)), rel=1e-6)


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_ppo_refuses_sharded_launches(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    fake = SimpleNamespace(distributed_type=DistributedType(kind), num_processes=2, process_index=0)
    with pytest.raises(ConfigError, match=f"distributed_type {kind} is not supported"):
        DataParallel(fake)
    assert DataParallel(None).world == 1  # one process: no accelerator needed


def _dist_worker(dirs, out, processes, mode="fixed"):
    args = ["-m", "tests.ppo_dist_worker", str(dirs["sft"]), str(dirs["critic"]), str(out), mode]
    if processes == 1:
        # Plain python: the 1-process path a user runs (no process group at all).
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, *args]
        run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        _launch(args, cwd=REPO, processes=processes)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def ppo_dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-dist")
    sft = copy_policy(tiny_models["policy"], root / "sft", embed_scale=4.0)
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


# Logged per step; the losses, grad norm and approx-KL are global token means / the norm of
# the all-reduced gradient, the rest gathered-batch statistics.
COMPARED = [
    "reward/len",
    "objective/score",
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "loss/policy",
    "loss/value",
    "loss/total",
    "policy/approxkl",
    "policy/clipfrac",
    "val/clipfrac",
    "val/explained_variance",
    "val/mean",
    "val/returns_mean",
    "train/grad_norm",
    "gen/length",
    "gen/eos_rate",
    "train/updates",
]


@pytest.mark.parametrize("mode", ["fixed", "shared"])  # shared: critic.shared_trunk
def test_train_ppo_two_processes_compute_what_one_does(ppo_dirs, tmp_path, mode):
    one = _dist_worker(ppo_dirs, tmp_path / "one.json", 1, mode)
    two = _dist_worker(ppo_dirs, tmp_path / "two.json", 2, mode)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    # Same steps and updates (2 steps x 2 epochs x 1 minibatch).
    assert len(one["history"]) == len(two["history"]) == 2
    assert [h["train/updates"] for h in two["history"]] == [2.0, 2.0]
    # Tolerance: float32 sums in a different order (per-rank partial sums, padding to another
    # width) differ by ~1e-7 relative per operation; after 4 Adam steps the differences stay
    # ~1e-6. 1e-4 is far below what a wrong statistic gives (a per-shard whitening or a
    # per-rank token mean moves these numbers by 1e-2 or more).
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        for key in COMPARED:
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-5, nan_ok=True), key
    assert two["kl_coef"] == pytest.approx(one["kl_coef"], rel=1e-6)
    # the adaptive controller moved with the global batch size: 0.1 · (1 - 0.2 · 4 / 100)^2
    assert two["kl_coef"] == pytest.approx(0.1 * 0.992**2, rel=1e-3)
    p1, p2 = (torch.tensor(r["params"]) for r in (one, two))
    moved = (p1 - _dist_worker_init(ppo_dirs, shared_trunk=mode == "shared")).abs().max()
    assert moved > 1e-4  # the updates changed the weights...
    assert (p2 - p1).abs().max() < 1e-5  # ...by the same amount on 1 and 2 processes
    # the replicas hold identical weights
    (s0, a0), (s1, a1) = two["replica_checksums"]
    assert (s0, a0) == (s1, a1)


def _dist_worker_init(dirs, shared_trunk=False):
    """The trainable parameters before any update (the fresh adapter of seed 0 + the critic)."""
    from rlhf_lab.ppo.model import load_policy_critic

    from .ppo_dist_worker import CFG

    torch.manual_seed(CFG.seed)
    model = load_policy_critic(
        dirs["sft"], dirs["critic"], CFG.lora, CFG.temperature, shared_trunk=shared_trunk
    )
    return torch.cat([p.detach().reshape(-1).double() for p in model.trainable_parameters()])


PPO_PARAMS = {
    "reward": {"weights": {"reward_model": 1.0, "text/length": 0.5}, "length_band": [2, 8]},
    "ppo": {**TINY_PPO, "steps": 2, "save_every": 1, "epochs": 2},
}


def test_train_ppo_on_two_cpu_processes_saves_once_and_resumes(tiny_models, tmp_path):
    copy_policy(tiny_models["policy"], tmp_path / "models/sft")
    make_critic(tmp_path / "models/sft", tmp_path / "models/critic")
    make_reward_model(tiny_models["encoder"], tmp_path / "models/reward")
    write_prompts(tmp_path, 6)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PPO_PARAMS))
    stage = ["-m", "rlhf_lab.cli", "train_ppo", "--params", "params.yaml"]
    log = _launch(stage, tmp_path)

    m = json.loads((tmp_path / "metrics/full/train_ppo.json").read_text())
    assert m["train/steps"] == 2 and m["train/skipped_updates"] == 0
    # minibatches=2 of the global 4 prompts: 2 updates per epoch whatever the process count
    assert m["train/updates"] == 2 * 2
    # written once, by the main process: one summary, one curve point per step
    assert len(re.findall(r"^\s*train_ppo\s*$", log, flags=re.MULTILINE)) == 1
    curve = tmp_path / "plots/train_ppo/plots/metrics/objective/score.tsv"
    assert len(curve.read_text().splitlines()) == 1 + 2
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    out = tmp_path / "models/ppo"
    tok, lm = models.load_tokenizer(out), models.load_causal_lm(out)
    ids = tok("hello", return_tensors="pt")
    assert lm.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids.input_ids.shape[1]
    # each process's RNG is checkpointed (rank 0's in the usual rng.pt)
    last = tmp_path / "checkpoints/train_ppo/step-000002"
    assert (last / "rng.pt").is_file() and (last / "rng-rank1.pt").is_file()

    # Interrupted after step 1: the resumed 2-process run redoes step 2 exactly (every rank
    # restores its own sampling RNG), so it ends where the uninterrupted run did.
    weights = (out / "model.safetensors").read_bytes()
    (last / "state.json").unlink()  # no longer a complete checkpoint
    log = _launch([*stage, "--resume"], tmp_path)
    assert log.count("resuming train_ppo at step 1/2") == 1
    resumed = json.loads((tmp_path / "metrics/full/train_ppo.json").read_text())
    assert {k: v for k, v in resumed.items() if not k.startswith("time/")} == {
        k: v for k, v in m.items() if not k.startswith("time/")
    }
    assert (out / "model.safetensors").read_bytes() == weights


def test_train_ppo_two_processes_with_uneven_shards_after_a_dropped_reply(ppo_dirs, tmp_path):
    # Rank 0 loses its first reply (nan score) at step 0: 1 reply vs rank 1's 2, minibatches
    # of 1 per process, so rank 0 runs its second minibatch as a zero-weight row.
    one = _dist_worker(ppo_dirs, tmp_path / "one.json", 1, "drop")
    two = _dist_worker(ppo_dirs, tmp_path / "two.json", 2, "drop")
    for run in (one, two):
        first = run["history"][0]
        assert first["objective/nonfinite_replies"] == 1.0
        # 2 epochs x 2 minibatches, none skipped: 1 process cuts 3 replies into 2 + 1
        assert [h["train/updates"] for h in run["history"]] == [4.0, 4.0]
        assert first["train/skipped_updates"] == 0.0
    # The rollout statistics of step 0 (before any update) are over the same 3 replies.
    for key in ("objective/score", "gen/length", "gen/eos_rate", "objective/entropy", "val/mean"):
        assert two["history"][0][key] == pytest.approx(one["history"][0][key], rel=1e-5), key
    (s0, a0), (s1, a1) = two["replica_checksums"]
    assert (s0, a0) == (s1, a1)
