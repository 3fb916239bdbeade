"""train_ppo: PPO on the SFT policy against the composite reward; writes models/ppo.

    rlhf-lab train_ppo --params params.yaml             # continues a compatible checkpoint
    rlhf-lab train_ppo --params params.yaml --resume    # must continue (else one-line error)
    rlhf-lab train_ppo --params params.yaml --fresh     # start at step 0 regardless
    accelerate launch --config_file accelerate/multi_gpu.yaml --num_processes 4 \
        -m rlhf_lab.cli train_ppo --params params.yaml  # data-parallel (docs/accelerate.md)

Reads ``task``, ``ppo``, ``critic.shared_trunk``, ``reward.weights``/``weights_end``/
``length_band`` (and ``judge`` when the judge weight is non-zero),
``data/grounded/train.jsonl`` (train_recommender), ``models/sft``, ``models/critic`` and
``models/reward``; writes
``models/ppo`` (the policy merged into a plain causal LM), ``metrics/train_ppo.json``, dvclive
curves under ``plots/train_ppo/`` and checkpoints under ``checkpoints/train_ppo/``. The loop
is :class:`rlhf_lab.ppo.trainer.PpoTrainer`; which checkpoint a run continues, and why, is
:meth:`~rlhf_lab.ppo.trainer.PpoTrainer.train`'s.
The critic-free estimators (``ppo.advantage: grpo | dr_grpo | rloo | reinforce_pp``; what each
needs is ``rlhf_lab.config.ESTIMATORS``) never read ``models/critic`` (no critic adapter, no
value head):

    rlhf-lab train_ppo --params params.yaml   # params.yaml: ppo.advantage: grpo, num_generations: 4

With ``critic.shared_trunk: true`` (gae) only the value head of ``models/critic`` is loaded, and
it reads the policy's own hidden states (:mod:`rlhf_lab.ppo.model`).

Under ``accelerate launch`` every process trains its shard of each batch
(:mod:`rlhf_lab.ppo.distributed`) and only the main process writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhf_lab import ui
from rlhf_lab.config import CriticLayout, Params, section_dict
from rlhf_lab.errors import DataError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, read_jsonl, stage_outputs
from rlhf_lab.ppo.composite_score import active_components, build_scorer, describe
from rlhf_lab.ppo.distributed import DataParallel
from rlhf_lab.ppo.fingerprint import stage_fingerprint
from rlhf_lab.ppo.model import export_policy, load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer
from rlhf_lab.reward_components import REWARD_MODEL
from rlhf_lab.training.common import make_accelerator

PROMPTS = Path("data/grounded/train.jsonl")
SFT_DIR = Path("models/sft")
CRITIC_DIR = Path("models/critic")
REWARD_DIR = Path("models/reward")
OUT_DIR = Path("models/ppo")
CHECKPOINT_DIR = Path("checkpoints/train_ppo")
PLOTS_DIR = Path("plots/train_ppo")
METRICS = Path("metrics/train_ppo.json")


def main(params: Params, resume: bool | None = None, **_: Any) -> None:
    cfg = params.ppo
    layout = params.critic_layout  # from ppo.advantage's needs and critic.shared_trunk
    critic_dir = CRITIC_DIR if layout.has_critic else None
    required = [(SFT_DIR, "train_sft")]
    if critic_dir is not None:
        required.append((critic_dir, "train_critic"))
    for path, stage in required:
        if not path.is_dir():
            raise DataError(f"{path}: not found (run `rlhf-lab {stage}` first)")
    weighted = active_components(params.reward.weights, params.reward.weights_end)
    if REWARD_MODEL in weighted and not REWARD_DIR.is_dir():
        raise DataError(f"{REWARD_DIR}: not found (run `rlhf-lab train_reward` first)")
    if not PROMPTS.is_file():
        raise DataError(f"{PROMPTS}: not found (run `rlhf-lab train_recommender` first)")
    rows = read_jsonl(PROMPTS)
    if not rows:
        raise DataError(f"{PROMPTS}: no prompts")

    scorer = build_scorer(params, cfg.steps, reward_model_dir=REWARD_DIR)
    catalogue = params.data.catalogue
    inputs = stage_fingerprint(
        params,
        files={str(PROMPTS): PROMPTS, **({catalogue: catalogue} if catalogue else {})},
        dirs={
            str(SFT_DIR): SFT_DIR,
            str(CRITIC_DIR): critic_dir,
            str(REWARD_DIR): REWARD_DIR if REWARD_MODEL in weighted else None,
        },
    )
    # One process, or N under `accelerate launch` (ppo.batch_size stays the global batch).
    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "ppo.batch_size")
    dp = DataParallel(accelerator)
    torch.manual_seed(cfg.seed)  # the policy adapter's init (the same on every process)
    model = load_policy_critic(
        SFT_DIR,
        critic_dir,
        cfg.lora,
        cfg.temperature,
        device=accelerator.device,
        shared_trunk=layout is CriticLayout.SHARED_TRUNK,
    )
    with stage_outputs(OUT_DIR, PLOTS_DIR, full_path(METRICS), METRICS):
        trainer = PpoTrainer(
            model,
            rows,
            scorer,
            cfg,
            system_prompt=params.task.system_prompt,
            checkpoint_dir=CHECKPOINT_DIR,
            plots_dir=PLOTS_DIR if dp.is_main else None,
            progress=dp.is_main,
            fingerprint=inputs,
            dp=dp,
        )
        metrics = trainer.train(resume=resume)
        # Every replica holds the same weights: the main process alone writes them and the metrics.
        dp.barrier()
        if not dp.is_main:
            return

        with atomic_dir(OUT_DIR) as tmp:
            export_policy(
                model,
                tmp,
                stage="train_ppo",
                base=str(SFT_DIR),
                critic=None if critic_dir is None else str(critic_dir),
                reward=describe(scorer),
                params=section_dict(params, "task", "ppo", "reward"),
                metrics={k: v for k, v in metrics.items() if not k.startswith("time/")},
            )
        write_metrics(METRICS, metrics)
    show = [
        "objective/score_start",
        "objective/score",
        "objective/kl",
        "objective/kl_coef",
        "objective/entropy",
        "policy/clipfrac",
        "loss/value",
        "val/explained_variance",
        "gen/length",
        "gen/eos_rate",
        "train/skipped_updates",
        "time/samples_per_s",
    ]
    rewards = sorted(k for k in metrics if k.startswith("reward/"))
    ui.summary("train_ppo", {k: metrics[k] for k in [*show, *rewards] if k in metrics})
