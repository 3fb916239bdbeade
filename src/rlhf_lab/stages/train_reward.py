"""train_reward: the Bradley–Terry reward model on the scored preference pairs.

    rlhf-lab train_reward --params params.yaml
    accelerate launch --config_file accelerate/cpu.yaml -m rlhf_lab.cli train_reward

Reads ``reward.train``, ``data/scored/{train,valid,test}.jsonl`` (chosen/rejected of every row,
whatever its label source) and ``models/base/encoder``; writes ``models/reward`` (encoder with a
1-logit head, ``reward_stats.json``, ``provenance.json``), ``metrics/train_reward.json`` and the
curves in ``plots/train_reward/``. Library code: ``rlhf_lab.training.reward_model``.

Metrics (``<split>`` is ``valid`` and ``test``; a tie counts half everywhere):

* ``<split>/accuracy``: fraction of pairs whose chosen reply gets the higher reward;
* ``<split>/longer_wins_accuracy``: the same for "the longer reply (characters) wins" on the
  same pairs; a reward model that only learned length scores about this;
* ``<split>/accuracy_chosen_shorter``: accuracy on the pairs where the chosen reply is the
  shorter one (a length-only model scores 0 here, chance is 0.5);
* ``<split>/margin``: mean raw reward of chosen minus rejected; ``<split>/pairs``: pair count;
* ``train/loss``, ``train/accuracy``: mean over the last epoch's batches; ``train/pairs``,
  ``train/steps``; ``data/dropped_<split>``: rows without two distinct replies;
* ``reward/mean``, ``reward/std``: raw scores of every training reply (saved for PPO);
* ``perf/*``: training pairs/s and seconds (evaluation excluded), peak memory, processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params
from rlhf_lab.errors import DataError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import read_jsonl, stage_outputs
from rlhf_lab.training.reward_model import pairs_from_rows, train_reward_model

SCORED_DIR = Path("data/scored")
ENCODER_DIR = Path("models/base/encoder")
OUT_DIR = Path("models/reward")
METRICS = Path("metrics/train_reward.json")
PLOTS = Path("plots/train_reward")


def _rows(split: str) -> list[dict[str, Any]]:
    path = SCORED_DIR / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found (run `rlhf-lab score_with_llm` first)")
    return read_jsonl(path)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(params: Params, **_: Any) -> None:
    cfg = params.reward.train
    pairs, dropped = {}, {}
    for split in ("train", "valid", "test"):
        pairs[split], dropped[split] = pairs_from_rows(_rows(split))
    if not pairs["train"]:
        raise DataError(f"{SCORED_DIR / 'train.jsonl'}: no usable preference pairs")
    with stage_outputs(OUT_DIR, PLOTS, full_path(METRICS), METRICS):
        outcome = train_reward_model(
            ENCODER_DIR,
            pairs["train"],
            {"valid": pairs["valid"], "test": pairs["test"]},
            cfg,
            out_dir=OUT_DIR,
            plots_dir=PLOTS,
            provenance={"stage": "train_reward", "params": {"reward": {"train": cfg.model_dump()}}},
        )
        if not outcome.is_main_process:
            return
        m = outcome.metrics
        m.update({f"data/dropped_{split}": n for split, n in dropped.items()})
        write_metrics(METRICS, m)
    ui.summary(
        "train_reward",
        {
            "train pairs (dropped)": f"{m['train/pairs']} ({dropped['train']})",
            "train loss (last epoch)": m["train/loss"],
            **{
                f"{split} accuracy / longer-wins": (
                    f"{_num(m[f'{split}/accuracy'])} / {_num(m[f'{split}/longer_wins_accuracy'])}"
                )
                for split in ("valid", "test")
            },
            "test margin": m["test/margin"],
            "reward mean / std": f"{_num(m['reward/mean'])} / {_num(m['reward/std'])}",
            "processes": outcome.num_processes,
            "pairs/s": m["perf/train_pairs_per_s"],
            "saved": str(OUT_DIR),
        },
    )
