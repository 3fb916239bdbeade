"""The evaluate stage's library: sample SFT and PPO on held-out prompts, score, compare, decide.

Flow (:func:`run_evaluation`; the stage module only loads params and writes the outputs), one
module per concern:

1. :mod:`~rlhf_lab.evaluation.sampling`: both policies answer the same test prompts with the
   same sampling settings and seed, and KL(PPO || SFT) is estimated on PPO's sampled tokens;
2. :mod:`~rlhf_lab.evaluation.scoring`: the reward model, every rule component of the task
   (from :func:`rlhf_lab.reward_components.build`, as PPO's), BERTScore and optionally the
   judge score each reply and the human references;
3. :mod:`~rlhf_lab.evaluation.metrics`: corpus metrics per model and paired comparisons PPO vs
   SFT as one flat dict of namespaced metrics;
4. :mod:`~rlhf_lab.evaluation.gates`: ``eval.gates`` and the verdict.

:mod:`~rlhf_lab.evaluation.report` writes the report and plots from the :class:`EvalResult`.

Metric keys are flat and namespaced for ``dvc metrics diff`` / ``dvc exp show``
(``<m>`` is ``sft`` or ``ppo``; ``ref`` has the keys that make sense for the references):

- ``<m>/rm_score`` (+ ``_ci_lo``/``_ci_hi``): mean normalised reward-model score, 95% CI;
- ``<m>/bleu``, ``bleu1``, ``bleu2``, ``bleu4``: sacrebleu corpus BLEU on rows with a
  reference (``bleu`` is the standard BLEU-4, kept as the key the gate reads);
- ``<m>/rougeL``, ``<m>/bertscore_f1`` (+ CI): mean ROUGE-L / BERTScore F1 to the reference;
- ``<m>/distinct1``, ``distinct2``: corpus distinct-n; ``<m>/length``, ``tokens``: mean reply
  length in words / policy tokens (EOS counted); ``<m>/eos_rate``: replies that ended on EOS;
- ``<m>/reward/<component>``: mean of each rule component (``text/*`` and the task's own);
- ``<m>/rec_hit_rate``, ``rec_rate`` (crs): a gold movie / any known movie named;
- ``<m>/judge/<dim>`` (rubric dimensions and ``overall``), ``<m>/judge_failures``;
- ``delta/<metric>``: PPO minus SFT for each metric above; ``delta/rm_score_ci_lo/hi``: paired
  bootstrap CI of the mean per-prompt gain;
- ``delta/win_rate_rm`` (+ CI), ``delta/rm_pvalue_wilcoxon``, ``delta/rm_pvalue_ttest``: PPO
  vs SFT by reward model (Wilcoxon signed-rank is the headline test); ``delta/win_rate_judge``
  and ``delta/judge_pvalue_*`` the same on the judge's ``overall`` rating;
- ``delta/kl_ppo_sft`` (+ CI): KL(PPO || SFT) in nats per reply (step 2);
- ``eval/num_prompts``, ``eval/num_references``: prompts evaluated, of which with a reference;
- ``verdict/decision`` (proceed / adjust / reconsider, :func:`decide`),
  ``verdict/failed_gates`` (comma-separated, or ""), ``verdict/pass/<gate>`` (1/0) and
  ``verdict/value/<gate>`` (what the gate checked).

Steps 3 and 4 are pure (numbers in, numbers out) and unit-tested without models.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab import reward_components, ui
from rlhf_lab.config import EvalConfig, Params
from rlhf_lab.data.rows import Row
from rlhf_lab.errors import DataError
from rlhf_lab.evaluation.bertscore import BertScorer
from rlhf_lab.evaluation.gates import Verdict, check_gates
from rlhf_lab.evaluation.metrics import (
    ModelOutputs,
    build_metrics,
    component_breakdown,
    largest_changes,
)
from rlhf_lab.evaluation.sampling import generate_replies, kl_on_samples, load_policy
from rlhf_lab.evaluation.scoring import JudgeScorer, reference_of, score_outputs
from rlhf_lab.io import read_jsonl
from rlhf_lab.reward_model import RewardModel


@dataclass(frozen=True)
class EvalPaths:
    """Where the evaluated models live (the stage's DVC deps)."""

    sft: Path = Path("models/sft")
    ppo: Path = Path("models/ppo")
    reward: Path = Path("models/reward")
    encoder: Path = Path("models/base/encoder")


def load_prompt_rows(path: str | Path, num_prompts: int) -> list[Row]:
    """The first ``num_prompts`` prompt rows of ``path`` (fewer if the file is shorter)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found (run prepare_preference first)")
    rows = read_jsonl(path)[:num_prompts]
    if not rows:
        raise DataError(f"{path}: no prompt rows to evaluate")
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), list) or not row["prompt"]:
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}) has no prompt messages")
    return rows


@dataclass
class EvalResult:
    """Everything the stage writes: metrics, per-row outputs, the breakdown and the verdict."""

    task: str
    rows: list[Row]
    outputs: dict[str, ModelOutputs]
    kl: np.ndarray
    metrics: dict[str, Any]
    breakdown: list[dict[str, Any]]
    verdict: Verdict
    gains: list[int]
    losses: list[int]


def finish(
    task: str,
    rows: list[Row],
    outputs: dict[str, ModelOutputs],
    kl: np.ndarray,
    cfg: EvalConfig,
) -> EvalResult:
    """Metrics, breakdown, gates and the largest changes from scored outputs (pure)."""
    refs = [reference_of(r) for r in rows]
    metrics = build_metrics(outputs, refs, kl, n_boot=cfg.n_boot, seed=cfg.seed)
    verdict = check_gates(metrics, cfg.gates)
    metrics.update(verdict.metrics())
    gains, losses = largest_changes(rows, outputs)
    breakdown = component_breakdown(outputs, cfg.n_boot, cfg.seed)
    return EvalResult(task, rows, outputs, kl, metrics, breakdown, verdict, gains, losses)


def run_evaluation(
    rows: list[Row],
    params: Params,
    *,
    paths: EvalPaths = EvalPaths(),
    judge_factory: Callable[[], JudgeScorer] | None = None,
) -> EvalResult:
    """Generate with both policies, estimate the KL, score everything, compare and decide.

    Both policies stay in memory until the KL is estimated (it needs each one's log-probs of
    PPO's samples); they are released before the reward model, encoder and judge load.
    Reads ``params.eval``, ``task`` and what the task's rule components read (``reward``'s
    length band, the crs ``data.catalogue``).
    """
    cfg, task, system_prompt = params.eval, params.task.name, params.task.system_prompt
    rules = reward_components.RuleContext.from_params(params)  # fails fast on a bad catalogue
    sft_model, sft_tok = load_policy(paths.sft)
    ppo_model, ppo_tok = load_policy(paths.ppo)
    if sft_tok.get_vocab() != ppo_tok.get_vocab():
        raise DataError(
            f"{paths.sft} and {paths.ppo} have different tokenizers: KL(PPO || SFT) needs "
            "both policies to share one (PPO starts from the SFT model)"
        )
    generated = {
        "sft": generate_replies(sft_model, sft_tok, rows, cfg, system_prompt, "generate sft"),
        "ppo": generate_replies(ppo_model, ppo_tok, rows, cfg, system_prompt, "generate ppo"),
    }
    kl = kl_on_samples(
        ppo_model,
        sft_model,
        generated["ppo"],
        temperature=cfg.temperature,
        pad_id=ppo_tok.pad_token_id,
        batch_size=cfg.batch_size,
    )
    del sft_model, ppo_model
    gc.collect()  # the policies are the largest thing in memory; scoring needs none of them

    n = len(rows)
    outputs: dict[str, ModelOutputs] = {
        name: ModelOutputs(
            texts=g.texts, valid=np.ones(n, dtype=bool), n_tokens=g.n_tokens, eos=g.eos
        )
        for name, g in generated.items()
    }
    refs = [reference_of(r) for r in rows]
    outputs["ref"] = ModelOutputs(
        texts=[r or "" for r in refs], valid=np.array([r is not None for r in refs])
    )
    ui.console.print("scoring replies (reward model, rule components, BERTScore)")
    score_outputs(
        outputs,
        rows,
        components=reward_components.build(
            reward_components.task_rules(task, generic=True), params, context=rules
        ),
        catalogue=rules.catalogue,
        task=task,
        reward_model=RewardModel(paths.reward),
        bert_scorer=BertScorer.from_dir(paths.encoder, cfg.bertscore_layers, cfg.batch_size),
        judge=judge_factory() if judge_factory is not None else None,
    )
    return finish(task, rows, outputs, kl, cfg)
