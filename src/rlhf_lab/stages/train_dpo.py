"""train_dpo: direct preference optimisation (DPO/IPO) of the SFT policy, merged into models/dpo.

    rlhf-lab train_dpo --params params.yaml
    accelerate launch --config_file accelerate/cpu.yaml -m rlhf_lab.cli train_dpo

Reads ``dpo``, ``task.system_prompt``, ``data/preference/{train,valid}.jsonl`` (prompt, chosen,
rejected; rows without two distinct replies are dropped), each pair on the prompt of its id in
``data/grounded/{train,valid}.jsonl`` (train_recommender: the prompt PPO and evaluate give the
policy; for crs grounded in the recommender's candidates, for other tasks the same prompt;
:func:`rlhf_lab.data.policy_prompts.on_policy_prompts`) and ``models/sft`` (the policy to
train *and* the reference: the same weights with the LoRA adapter off); writes ``models/dpo``
(a plain causal LM directory with ``provenance.json``, as ``models/sft``),
``metrics/train_dpo.json`` and the curves in ``plots/train_dpo/``. Library code:
``rlhf_lab.training.dpo`` (own loop rather than TRL's ``DPOTrainer``: its docstring says why).

Metrics (TRL's names; ``train/*`` are means over the last epoch's steps, ``valid/*`` over the
valid pairs after training, ``valid_start/*`` before it, where the policy is the reference):
``loss``; ``rewards/chosen`` and ``rewards/rejected`` (implicit reward ``β log π/π_ref`` of
each reply); ``rewards/margins`` (chosen minus rejected); ``rewards/accuracies`` (fraction of
pairs whose chosen reward is strictly higher); ``logps/chosen`` and ``logps/rejected``
(summed log-prob of the reply under the policy). Also ``train/pairs``, ``valid/pairs``,
``data/dropped_<split>``, ``train/steps``, ``train/skipped_nonfinite``,
``train/truncated_replies`` (replies cut by ``dpo.max_length``), ``lora/trainable_parameters``
and ``perf/*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.data.policy_prompts import on_policy_prompts
from rlhf_lab.errors import DataError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import read_jsonl, stage_outputs
from rlhf_lab.training.dpo import train_dpo_model
from rlhf_lab.training.reward_model import pairs_from_rows

PREFERENCE_DIR = Path("data/preference")
PROMPTS_DIR = Path("data/grounded")
SFT_DIR = Path("models/sft")
OUT_DIR = Path("models/dpo")
METRICS = Path("metrics/train_dpo.json")
PLOTS = Path("plots/train_dpo")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(params: Params, **_: Any) -> None:
    cfg = params.dpo
    pairs, dropped = {}, {}
    for split in ("train", "valid"):
        pairs[split], dropped[split] = pairs_from_rows(
            on_policy_prompts(
                read_jsonl(PREFERENCE_DIR / f"{split}.jsonl", missing_ok=True),
                read_jsonl(PROMPTS_DIR / f"{split}.jsonl", missing_ok=True),
            )
        )
    if not pairs["train"]:
        raise DataError(
            f"{PREFERENCE_DIR / 'train.jsonl'}: no preference pairs with two distinct replies "
            "(run `rlhf-lab prepare_preference` first)"
        )
    with stage_outputs(OUT_DIR, PLOTS, full_path(METRICS), METRICS):
        outcome = train_dpo_model(
            SFT_DIR,
            pairs["train"],
            pairs["valid"],
            cfg,
            system_prompt=params.task.system_prompt,
            out_dir=OUT_DIR,
            plots_dir=PLOTS,
            provenance={
                "stage": "train_dpo",
                "params": {"task": {"system_prompt": params.task.system_prompt}}
                | section_dict(params, "dpo"),
            },
        )
        if not outcome.is_main_process:
            return
        m = outcome.metrics | {f"data/dropped_{k}": v for k, v in dropped.items()}
        write_metrics(METRICS, m)

    def before_after(key: str) -> str:
        return f"{_num(m[f'valid_start/{key}'])} → {_num(m[f'valid/{key}'])}"

    ui.summary(
        f"train_dpo ({cfg.loss_type}, β={cfg.beta})",
        {
            "train / valid pairs": f"{m['train/pairs']} / {m['valid/pairs']}",
            "train loss (last epoch)": m["train/loss"],
            "train reward accuracy": m["train/rewards/accuracies"],
            "valid loss": before_after("loss"),
            "valid reward accuracy": before_after("rewards/accuracies"),
            "valid reward margin": before_after("rewards/margins"),
            "valid rewards chosen / rejected": (
                f"{_num(m['valid/rewards/chosen'])} / {_num(m['valid/rewards/rejected'])}"
            ),
            "valid logps chosen / rejected": (
                f"{_num(m['valid/logps/chosen'])} / {_num(m['valid/logps/rejected'])}"
            ),
            "skipped non-finite steps": m["train/skipped_nonfinite"],
            "LoRA trainable parameters": f"{m['lora/trainable_parameters']:,}",
            "processes": outcome.num_processes,
            "pairs/s": m["perf/train_pairs_per_s"],
            "saved": str(OUT_DIR),
        },
    )
