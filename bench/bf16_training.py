"""bf16 autocast training vs float32, per training stage, on the default profile's data and models.

    python bench/bf16_training.py --workspace /path/to/finished/default/run   # the real result
    python bench/bf16_training.py --tiny          # tiny random models: a smoke run (seconds)

For each stage (SFT, reward model, critic, the PPO update, DPO)
two copies of the stage's model are built from the same seed, one trained with
``models.mixed_precision: fp32`` and one with ``bf16``, and ``--steps`` optimiser steps of each
are run on one fixed batch, *alternating* fp32 and bf16 step by step so that a neighbour's load
on a shared machine slows both alike. Every step goes through the project's own forward pass
(``precision.training_autocast`` around each forward, as the stages run it). Reported per stage
and precision: the loss at the first and the last step (on one batch both must fall: a bf16
run that does not learn is the autocast weight-cache bug, which ``tests/test_precision.py``
reproduces) and the median seconds per step, and the
bf16 speed-up. The PPO "step" is one ``PpoTrainer.update`` (``ppo.epochs`` x
``ppo.minibatches`` optimiser steps) on one rollout; each precision samples and recomputes its
own rollout (bf16 sampling under bf16, as a real run does), scored by ``models/reward``.

The workspace needs ``data/prompts``, ``data/preference``, ``data/scored``, ``models/base``,
``models/sft``, ``models/critic``, ``models/reward`` and ``params.yaml``; it is only read.
Writes ``bench/results/bf16_training.json`` (``--tiny``: ``bench/.work/bf16_training_tiny.json``,
never the real result) and prints a table. A run replaces the stages it measured and keeps the
file's other stages when they were measured on the same CPU (``--stages ppo_update`` adds one
row to a result, it does not erase the rest); each stage records its own load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchlib import RESULTS, WORK, load_span, machine
from rlhf_lab import models, precision, ui
from rlhf_lab.config import Params, load_params
from rlhf_lab.io import read_jsonl, write_json

SETTINGS = ("fp32", "bf16")

Step = Callable[[], float]
"""One optimiser step (or one PPO update) on the stage's fixed batch; returns its loss."""


# ---------------------------------------------------------------------------------------------
# one builder per stage: (workspace, params) -> a step function on one fixed batch
# ---------------------------------------------------------------------------------------------


def plain_step(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module, cfg: Any) -> Step:
    """A step of the stage's AdamW (``cfg.lr``, ``cfg.weight_decay``, no schedule) on
    ``loss_fn()``: backward, clip the trainable weights' gradients to ``cfg.max_grad_norm``,
    update, zero."""
    from rlhf_lab.training.common import adamw_with_warmup

    optimizer, _ = adamw_with_warmup(model, cfg.lr, cfg.weight_decay, 1, 0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return step


def sft_step(ws: Path, params: Params) -> Step:
    from rlhf_lab.training.common import apply_lora
    from rlhf_lab.training.sft import SftCollator, batch_nll, sft_examples, tokenize_example

    cfg = params.sft
    torch.manual_seed(cfg.seed)
    tok = models.load_tokenizer(ws / "models/base/policy")
    base = models.load_causal_lm(ws / "models/base/policy")
    models.ensure_pad_token(tok, base)
    model = apply_lora(base, cfg.lora).train()
    examples = sft_examples(
        read_jsonl(ws / "data/prompts/train.jsonl"), read_jsonl(ws / "data/preference/train.jsonl")
    )[: cfg.batch_size]
    feats = [tokenize_example(tok, e, cfg.max_length, params.task.system_prompt) for e in examples]
    batch = SftCollator(tok.pad_token_id)(feats)

    def loss() -> torch.Tensor:
        nll, n = batch_nll(model, batch)
        return nll.sum() / n.sum().clamp(min=1)

    return plain_step(loss, model, cfg)


def reward_step(ws: Path, params: Params) -> Step:
    from rlhf_lab.training.reward_model import (
        PairCollator,
        bradley_terry_loss,
        pairs_from_rows,
        score_batch,
    )

    cfg = params.reward.train
    torch.manual_seed(cfg.seed)
    tok = models.load_tokenizer(ws / "models/base/encoder", padding_side="right")
    model = models.load_sequence_classifier(ws / "models/base/encoder", num_labels=1)
    models.ensure_pad_token(tok, model)
    model.train()
    pairs, _ = pairs_from_rows(read_jsonl(ws / "data/preference/train.jsonl"))
    batch = PairCollator(tok, cfg.max_length)(pairs[: cfg.batch_size])

    def loss() -> torch.Tensor:
        return bradley_terry_loss(*score_batch(model, batch))

    return plain_step(loss, model, cfg)


def critic_step(ws: Path, params: Params) -> Step:
    from rlhf_lab.ppo.model import new_critic
    from rlhf_lab.training.critic import (
        Collator,
        encode,
        per_reply_mse,
        score_stats,
        scored_replies,
    )

    cfg = params.critic
    torch.manual_seed(cfg.seed)
    model = new_critic(ws / "models/sft", cfg.lora)
    # The judge's ratings in data/scored as targets: the critic stage regresses on the reward
    # model's by default, but the step costs the same and needs no scoring pass here.
    replies, _ = scored_replies(read_jsonl(ws / "data/scored/train.jsonl"))
    mean, std = score_stats(replies)
    examples = encode(
        model.tok, replies[: cfg.batch_size], cfg.max_length, params.task.system_prompt, mean, std
    )
    batch = Collator(model.tok.pad_token_id)(examples)

    def loss() -> torch.Tensor:
        values = model(
            batch["query"], batch["query_mask"], batch["response"], batch["response_mask"]
        )
        return per_reply_mse(values, batch["target"], batch["response_mask"]).mean()

    return plain_step(loss, model, cfg)


def ppo_update_step(ws: Path, params: Params) -> Step:
    from rlhf_lab.ppo.composite_score import CompositeScorer
    from rlhf_lab.ppo.model import load_policy_critic
    from rlhf_lab.ppo.trainer import PpoTrainer

    cfg = params.ppo
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(ws / "models/sft", ws / "models/critic", cfg.lora, cfg.temperature)
    rows = read_jsonl(ws / "data/prompts/train.jsonl")
    if (ws / "models/reward/config.json").is_file():
        from rlhf_lab.reward_scorer import RewardModel

        rm = RewardModel(ws / "models/reward")

        def score(replies: list[str], batch: list[dict]) -> list[float]:
            return rm.score([r["prompt"] for r in batch], replies).tolist()
    else:  # --tiny: any score that varies between replies does

        def score(replies: list[str], batch: list[dict]) -> list[float]:
            return [min(len(r), 40) / 40 for r in replies]

    scorer = CompositeScorer({"score": score}, {"score": 1.0}, total_steps=cfg.steps)
    trainer = PpoTrainer(
        model, rows, scorer, cfg, system_prompt=params.task.system_prompt, progress=False
    )
    torch.manual_seed(cfg.seed)
    rollout, _ = trainer.rollout(0)
    calls = iter(range(10**9))

    def step() -> float:
        stats = trainer.update(rollout, next(calls))
        return stats["loss/total"]

    return step


def dpo_step(ws: Path, params: Params) -> Step:
    from rlhf_lab.training.common import lora_policy_builder
    from rlhf_lab.training.dpo import PairCollator, dpo_loss, pair_logps, tokenize_pair
    from rlhf_lab.training.reward_model import pairs_from_rows

    cfg = params.dpo
    torch.manual_seed(cfg.seed)
    tok = models.load_tokenizer(ws / "models/sft")
    model = lora_policy_builder(ws / "models/sft", tok, cfg.lora)().train()
    pairs, _ = pairs_from_rows(read_jsonl(ws / "data/preference/train.jsonl"))
    feats = [
        tokenize_pair(tok, p, cfg.max_length, params.task.system_prompt)
        for p in pairs[: cfg.batch_size]
    ]
    batch = PairCollator(tok.pad_token_id)(feats)
    # The reference log-probs once, with the adapter off, in this copy's precision — as
    # train_dpo precomputes them (TRL's precompute_ref_log_probs).
    with torch.no_grad(), model.disable_adapter():
        ref_chosen, ref_rejected, _, _ = pair_logps(model, batch)

    def loss() -> torch.Tensor:
        pc, pr, nc, nr = pair_logps(model, batch)
        losses, _, _ = dpo_loss(pc, pr, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type, nc, nr)
        return losses.mean()

    return plain_step(loss, model, cfg)


STAGES: dict[str, Callable[[Path, Params], Step]] = {
    "sft": sft_step,
    "reward": reward_step,
    "critic": critic_step,
    "ppo_update": ppo_update_step,
    "dpo": dpo_step,
}


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------


def compare(name: str, build: Callable[[Path, Params], Step], ws: Path, params: Params, steps: int):
    """Both precisions of one stage, stepped alternately; losses and seconds per step."""
    steppers = {}
    for setting in SETTINGS:
        precision.configure(setting)
        steppers[setting] = build(ws, params)
    losses: dict[str, list[float]] = {s: [] for s in SETTINGS}
    seconds: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for i in ui.track(range(steps), name, total=steps):
        for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
            precision.configure(setting)
            t0 = time.perf_counter()
            losses[setting].append(steppers[setting]())
            seconds[setting].append(time.perf_counter() - t0)
    precision.configure("fp32")
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        # The first step pays one-off costs (oneDNN kernel selection, lazy allocations).
        timed = seconds[setting][1:] or seconds[setting]
        out[setting] = {
            "loss_first": losses[setting][0],
            "loss_last": losses[setting][-1],
            "losses": losses[setting],
            "s_per_step": statistics.median(timed),
        }
    out["bf16_speedup"] = out["fp32"]["s_per_step"] / out["bf16"]["s_per_step"]
    return out


def tiny_workspace(root: Path) -> tuple[Path, Params]:
    """Tiny random models and a few rows in the layout the stages leave (for --tiny)."""
    import shutil

    from rlhf_lab.config import LoraConfig
    from rlhf_lab.io import write_jsonl
    from rlhf_lab.ppo.model import new_critic, save_critic
    from rlhf_lab.testing import build_tiny_encoder, build_tiny_policy

    build_tiny_policy(root / "models/base/policy")
    build_tiny_encoder(root / "models/base/encoder")
    shutil.copytree(root / "models/base/policy", root / "models/sft")
    lora = LoraConfig(r=4, alpha=8)
    torch.manual_seed(0)
    save_critic(new_critic(root / "models/sft", lora), root / "models/critic")
    turns = [
        ("hello how are you doing today", "i am fine thanks and you", "no"),
        ("what is your favorite movie", "you should watch the matrix it is great", "dog dog"),
        ("i feel sick today", "sorry to hear that, i hope you feel better soon", "ok"),
        ("def add(a, b): return a + b", "returns the sum of the two numbers", "a"),
    ]
    rows = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": q}],
            "reference": good,
            "chosen": good,
            "rejected": bad,
            "label_source": "human",
            "meta": {},
            "scores": {"chosen": {"overall": 4.0 + i % 2}, "rejected": {"overall": 1.0}},
        }
        for i, (q, good, bad) in enumerate(turns * 2)
    ]
    for name in ("prompts", "preference", "scored"):
        write_jsonl(root / f"data/{name}/train.jsonl", rows)
    small = {"batch_size": 4, "max_length": 64, "lora": lora}
    params = Params().model_copy(
        update={
            "sft": Params().sft.model_copy(update={**small, "lr": 1e-2}),
            "critic": Params().critic.model_copy(update={**small, "lr": 1e-2}),
            "reward": Params().reward.model_copy(
                update={
                    "train": Params().reward.train.model_copy(
                        update={"batch_size": 4, "max_length": 64, "lr": 1e-2}
                    )
                }
            ),
            "ppo": Params().ppo.model_copy(
                update={"batch_size": 4, "minibatches": 2, "max_new_tokens": 6, "lora": lora}
            ),
        }
    )
    return root, params


def read_result(path: Path) -> dict[str, Any] | None:
    """The result file already at ``path``, or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def merged_stages(old: dict[str, Any] | None, new: dict[str, Any], cpu: str) -> dict[str, Any]:
    """``new``'s stages over ``old``'s, which are kept only if the same CPU measured them.

    Each stage's figures are a within-run ratio of its own alternating steps, so stages
    measured in different runs of one CPU sit side by side honestly; another CPU's do not.
    """
    if old is None or old.get("cpu") != cpu:
        return dict(new)
    # Files written before stages carried their own steps and load kept them at the top.
    shared = {k: old[k] for k in ("steps", "load_average_1min_start_end") if k in old}
    kept = {name: {**shared, **stage} for name, stage in old.get("stages", {}).items()}
    return {**kept, **new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("."), help="a finished default run")
    ap.add_argument("--steps", type=int, default=12, help="steps per stage and precision")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="result file (default by mode)")
    args = ap.parse_args()
    out = args.out or (
        WORK / "bf16_training_tiny.json" if args.tiny else RESULTS / "bf16_training.json"
    )
    if args.tiny and out.resolve() == (RESULTS / "bf16_training.json").resolve():
        raise SystemExit("--tiny never overwrites the real result; pick another --out")

    tmp = None
    if args.tiny:
        tmp = tempfile.TemporaryDirectory()
        ws, params = tiny_workspace(Path(tmp.name))
    else:
        ws = args.workspace.resolve()
        params = load_params(ws / "params.yaml")
    names = args.stages.split(",")
    for name in names:
        if name not in STAGES:
            raise SystemExit(f"--stages: unknown stage {name!r} (have {', '.join(STAGES)})")
    stages = {}
    for name in names:
        load_before = os.getloadavg()[0]
        stages[name] = compare(name, STAGES[name], ws, params, args.steps)
        # On a shared machine s/step says as much about the neighbours as about the code.
        stages[name]["load_average_1min_start_end"] = load_span(load_before)
        stages[name]["steps"] = args.steps

    info = machine()
    result = {
        "mode": "tiny" if args.tiny else "default profile",
        # the directory's name only: no machine path in a committed result
        "workspace": "tiny random models" if args.tiny else ws.name,
        **info,
        "stages": merged_stages(read_result(out), stages, info["cpu"]),
    }
    write_json(out, result)
    header = f"{'stage':<12}{'fp32 loss':>20}{'bf16 loss':>20}{'fp32 s/step':>13}"
    header += f"{'bf16 s/step':>13}{'speedup':>9}"
    # plain print: the table is wider than a default terminal, and rich would wrap it
    print(f"{result['cpu']} (native bf16: {result['cpu_native_bf16']})")
    print(header)
    for name, r in result["stages"].items():
        f, b = r["fp32"], r["bf16"]
        print(
            f"{name:<12}{f['loss_first']:>9.4f} -> {f['loss_last']:<7.4f}"
            f"{b['loss_first']:>9.4f} -> {b['loss_last']:<7.4f}"
            f"{f['s_per_step']:>13.3f}{b['s_per_step']:>13.3f}{r['bf16_speedup']:>8.2f}x"
        )
    ui.console.print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
