"""train_critic: warm-start PPO's critic (LoRA adapter + value head on models/sft) on judge scores.

    rlhf-lab train_critic --params params.yaml

Reads ``critic`` (and ``task.system_prompt``, so prompts look as PPO renders them),
``data/scored/{train,valid}.jsonl`` and ``models/sft``; writes ``models/critic`` (the format
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
from rlhf_lab.io import read_jsonl, write_json
from rlhf_lab.training.critic import scored_replies, train_critic

SCORED_DIR = Path("data/scored")
SFT_DIR = Path("models/sft")
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


def main(params: Params, **_: Any) -> None:
    cfg = params.critic
    if not (SFT_DIR / "config.json").is_file():
        raise DataError(f"{SFT_DIR}: no model (run `rlhf-lab train_sft` first)")
    train_rows = _read("train", required=True)
    train, skipped = scored_replies(train_rows)
    if not train:
        raise DataError(
            f"{SCORED_DIR / 'train.jsonl'}: no row has judge scores ({len(train_rows)} rows, "
            "scores null or without 'overall'); run score_with_llm with a judge backend"
        )
    valid, valid_skipped = scored_replies(_read("valid", required=False))
    if not valid:
        ui.console.print(
            f"[yellow]warning:[/] {SCORED_DIR / 'valid.jsonl'} has no scored replies; "
            "valid metrics will be null",
            highlight=False,
        )
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
        "train/skipped_rows": skipped,
        "valid/skipped_rows": valid_skipped,
    }
    write_json(METRICS, metrics)
    m = outcome.metrics

    def pair(key: str) -> str:
        return f"{_fmt(m[f'valid/untrained/{key}'])} → {_fmt(m[f'valid/{key}'])}"

    ui.summary(
        "train_critic",
        {
            "train replies / skipped rows": f"{m['train/replies']} / {skipped}",
            "train loss (first → last epoch)": f"{_fmt(m['train/loss_first_epoch'])} → "
            f"{_fmt(m['train/loss'])}",
            "valid MSE (untrained → trained)": pair("mse"),
            "valid Pearson (untrained → trained)": pair("pearson"),
            "valid Spearman (untrained → trained)": pair("spearman"),
            "saved": str(OUT_DIR),
        },
    )
