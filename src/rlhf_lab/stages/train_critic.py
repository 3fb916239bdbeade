"""train_critic: warm-start PPO's critic (LoRA adapter + value head on models/sft).

The target is each reply's score as PPO's first step pays it (``critic.target: ppo_score``:
the ``reward.weights`` composite clipped to ``±ppo.score_clip``), its reward-model score
(``reward_model``) or its judge score (``judge``); see :mod:`rlhf_lab.training.critic`.

    rlhf-lab train_critic --params params.yaml

Reads ``critic`` (and ``task.system_prompt``, so prompts look as PPO renders them; target
ppo_score: ``reward``, ``ppo.score_clip`` and what the components read),
``data/scored/{train,valid}.jsonl``, ``models/sft`` and ``models/reward``;
writes ``models/critic`` (the format
``train_ppo`` loads: ``adapter/``, ``value_head.safetensors``, ``critic.json``,
``provenance.json``), ``metrics/train_critic.json`` and dvclive curves under
``plots/train_critic/``. The loop is :func:`rlhf_lab.training.critic.train_critic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.errors import DataError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import read_jsonl, stage_outputs
from rlhf_lab.training.critic import (
    ScoredReply,
    candidate_replies,
    composite_targets,
    reward_model_targets,
    scored_replies,
    train_critic,
)

SCORED_DIR = Path("data/scored")
SFT_DIR = Path("models/sft")
REWARD_DIR = Path("models/reward")
OUT_DIR = Path("models/critic")
METRICS = Path("metrics/train_critic.json")
PLOTS_DIR = Path("plots/train_critic")


def _read(split: str, required: bool) -> list[dict[str, Any]]:
    path = SCORED_DIR / f"{split}.jsonl"
    if not path.is_file():
        if required:
            raise DataError(f"{path}: not found (run `rlhf-lab score_with_llm` first)")
        return []
    return read_jsonl(path)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _reward_model_targets(
    train_rows: list[dict[str, Any]], valid_rows: list[dict[str, Any]]
) -> tuple[list[ScoredReply], list[ScoredReply], int, int]:
    from rlhf_lab.reward_scorer import RewardModel

    if not (REWARD_DIR / "config.json").is_file():
        raise DataError(f"{REWARD_DIR}: no model (run `rlhf-lab train_reward` first)")

    def replies(rows: list[dict[str, Any]]) -> tuple[list[tuple[list[dict], str]], int]:
        # One pass: every row's replies, and how many rows had none (they are skipped).
        per_row = [candidate_replies([row]) for row in rows]
        return [r for found in per_row for r in found], sum(not found for found in per_row)

    (train_replies, train_skipped), (valid_replies, valid_skipped) = (
        replies(train_rows),
        replies(valid_rows),
    )
    if not train_replies:
        raise DataError(f"{SCORED_DIR / 'train.jsonl'}: no row has a reply to score")
    rm = RewardModel(REWARD_DIR)
    return (
        reward_model_targets(rm, train_replies),
        reward_model_targets(rm, valid_replies),
        train_skipped,
        valid_skipped,
    )


def _ppo_score_targets(
    params: Params, train_rows: list[dict[str, Any]], valid_rows: list[dict[str, Any]]
) -> tuple[list[ScoredReply], list[ScoredReply], int, int]:
    from rlhf_lab.ppo.composite_score import build_scorer

    scorer = build_scorer(params, 1, reward_model_dir=REWARD_DIR)  # step 0 only
    train = composite_targets(scorer, train_rows, params.ppo.score_clip)
    if not train:
        raise DataError(f"{SCORED_DIR / 'train.jsonl'}: no row has a reply to score")
    valid = composite_targets(scorer, valid_rows, params.ppo.score_clip)

    def skipped(rows: list[dict[str, Any]]) -> int:
        return sum(not candidate_replies([row]) for row in rows)

    return train, valid, skipped(train_rows), skipped(valid_rows)


def main(params: Params, **_: Any) -> None:
    cfg = params.critic
    if not (SFT_DIR / "config.json").is_file():
        raise DataError(f"{SFT_DIR}: no model (run `rlhf-lab train_sft` first)")
    train_rows = _read("train", required=True)
    valid_rows = _read("valid", required=False)
    if cfg.target == "ppo_score":
        train, valid, skipped, valid_skipped = _ppo_score_targets(params, train_rows, valid_rows)
    elif cfg.target == "reward_model":
        train, valid, skipped, valid_skipped = _reward_model_targets(train_rows, valid_rows)
    else:
        train, skipped = scored_replies(train_rows)
        if not train:
            raise DataError(
                f"{SCORED_DIR / 'train.jsonl'}: no row has judge scores ({len(train_rows)} "
                "rows, scores null or without 'overall'); run score_with_llm with a judge "
                "backend, or set critic.target: reward_model"
            )
        valid, valid_skipped = scored_replies(valid_rows)
    if not valid:
        ui.console.print(
            f"[yellow]warning:[/] {SCORED_DIR / 'valid.jsonl'} has no scored replies; "
            "valid metrics will be null",
            highlight=False,
        )
    with stage_outputs(OUT_DIR, PLOTS_DIR, full_path(METRICS), METRICS):
        outcome = train_critic(
            SFT_DIR,
            train,
            valid,
            cfg,
            system_prompt=params.task.system_prompt,
            out_dir=OUT_DIR,
            plots_dir=PLOTS_DIR,
            provenance={"stage": "train_critic", "params": section_dict(params, "critic", "task")},
        )
        if not outcome.is_main_process:
            return
        metrics = {
            **outcome.metrics,
            "critic/target": cfg.target,
            "train/skipped_rows": skipped,
            "valid/skipped_rows": valid_skipped,
        }
        write_metrics(METRICS, metrics)
    m = outcome.metrics

    def pair(key: str) -> str:
        return f"{_fmt(m[f'valid/untrained/{key}'])} → {_fmt(m[f'valid/{key}'])}"

    ui.summary(
        "train_critic",
        {
            "target": cfg.target,
            "train replies / skipped rows": f"{m['train/replies']} / {skipped}",
            "train loss (first → last epoch)": f"{_fmt(m['train/loss_first_epoch'])} → "
            f"{_fmt(m['train/loss'])}",
            "valid MSE (untrained → trained)": pair("mse"),
            "valid Pearson (untrained → trained)": pair("pearson"),
            "valid Spearman (untrained → trained)": pair("spearman"),
            "saved": str(OUT_DIR),
        },
    )
