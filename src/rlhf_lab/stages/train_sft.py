"""train_sft: LoRA supervised fine-tuning of the base policy, merged into models/sft.

    rlhf-lab train_sft --params params.yaml
    accelerate launch --config_file accelerate/cpu.yaml -m rlhf_lab.cli train_sft

Reads ``task`` (the system prompt) and ``sft``, ``data/grounded/{train,valid}.jsonl`` (the
references, on train_recommender's prompts: for crs, grounded in the recommender's
candidates) or, for data without references, ``data/preference/{train,valid}.jsonl`` (the
chosen replies), and ``models/base/policy``; writes ``models/sft`` (a plain causal LM directory with
``provenance.json``), ``metrics/train_sft.json`` and the curves in ``plots/train_sft/``.
Library code: ``rlhf_lab.training.sft``.

Metrics: ``train/loss`` (mean NLL per reply token over the last epoch), ``valid/loss`` and
``valid/perplexity`` (per reply token, after training), ``valid/loss_base`` and
``valid/perplexity_base`` (the base policy, before training), example/step/token counts,
``train/truncated_replies`` (replies cut by ``sft.max_length``, so trained without their EOS),
``lora/trainable_parameters`` and ``perf/*`` (tokens/s, seconds, peak memory, processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.errors import DataError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import read_jsonl, stage_outputs
from rlhf_lab.training.sft import sft_examples, train_sft_model

PROMPTS_DIR = Path("data/grounded")
PREFERENCE_DIR = Path("data/preference")
POLICY_DIR = Path("models/base/policy")
OUT_DIR = Path("models/sft")
METRICS = Path("metrics/train_sft.json")
PLOTS = Path("plots/train_sft")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def main(params: Params, **_: Any) -> None:
    cfg = params.sft
    examples = {
        split: sft_examples(
            read_jsonl(PROMPTS_DIR / f"{split}.jsonl", missing_ok=True),
            read_jsonl(PREFERENCE_DIR / f"{split}.jsonl", missing_ok=True),
        )
        for split in ("train", "valid")
    }
    if not examples["train"]:
        raise DataError(
            f"no SFT examples: neither {PROMPTS_DIR / 'train.jsonl'} (references) nor "
            f"{PREFERENCE_DIR / 'train.jsonl'} (chosen replies) has any "
            "(run `rlhf-lab prepare_preference` and `rlhf-lab train_recommender` first)"
        )
    with stage_outputs(OUT_DIR, PLOTS, full_path(METRICS), METRICS):
        outcome = train_sft_model(
            POLICY_DIR,
            examples["train"],
            examples["valid"],
            cfg,
            system_prompt=params.task.system_prompt,
            out_dir=OUT_DIR,
            plots_dir=PLOTS,
            provenance={"stage": "train_sft", "params": section_dict(params, "task", "sft")},
        )
        if not outcome.is_main_process:
            return
        m = outcome.metrics
        write_metrics(METRICS, m)
    ui.summary(
        "train_sft",
        {
            "train examples": m["train/examples"],
            "valid examples": m["valid/examples"],
            "train loss (last epoch)": m["train/loss"],
            "valid loss base → sft": f"{_num(m['valid/loss_base'])} → {_num(m['valid/loss'])}",
            "valid perplexity base → sft": (
                f"{_num(m['valid/perplexity_base'])} → {_num(m['valid/perplexity'])}"
            ),
            "LoRA trainable parameters": f"{m['lora/trainable_parameters']:,}",
            "processes": outcome.num_processes,
            "tokens/s": m["perf/train_tokens_per_s"],
            "saved": str(OUT_DIR),
        },
    )
