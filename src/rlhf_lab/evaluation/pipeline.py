"""The evaluate stage's library: sample every policy and the baseline on held-out prompts,
score, compare each policy with the baseline, decide per policy.

``eval.policies`` (default ``[ppo, dpo]``) are each compared with ``eval.baseline`` (default
``sft``); every model is the directory ``models/<name>``. Flow (:func:`run_evaluation`; the
stage module only loads params and writes the outputs), one module per concern:

1. :mod:`~rlhf_lab.evaluation.sampling`: every model answers the same test prompts with the
   same sampling settings and seed, and KL(policy || baseline) is estimated on each policy's
   sampled tokens (one model in memory at a time);
2. :mod:`~rlhf_lab.evaluation.scoring`: the reward model, every rule component of the task
   (from :func:`rlhf_lab.reward_components.build`, as PPO's), BERTScore and optionally the
   judge score each reply and the human references;
3. :mod:`~rlhf_lab.evaluation.metrics`: corpus metrics per model and paired comparisons of
   each policy with the baseline as one flat dict of namespaced metrics;
4. :mod:`~rlhf_lab.evaluation.gates`: ``eval.gates`` and a verdict per policy.

:mod:`~rlhf_lab.evaluation.report` writes the report and :mod:`~rlhf_lab.evaluation.figures` the
plots from the :class:`EvalResult`.

Metric keys are flat and namespaced for ``dvc metrics diff`` / ``dvc exp show``
(``<m>`` is the baseline or a policy, e.g. ``sft``, ``ppo``, ``dpo``; ``ref`` has the keys
that make sense for the references; ``<p>`` is a policy):

- ``<m>/rm_score`` (+ ``_ci_lo``/``_ci_hi``): mean normalised reward-model score, 95% CI;
- ``<m>/bleu``, ``bleu1``, ``bleu2``, ``bleu4``: sacrebleu corpus BLEU on rows with a
  reference (``bleu`` is the standard BLEU-4, kept as the key the gate reads);
- ``<m>/rougeL``, ``<m>/bertscore_f1`` (+ CI): mean ROUGE-L / BERTScore F1 to the reference;
  ``<m>/meteor``: mean METEOR to the reference, exact + stem matching, no WordNet synonyms
  (:func:`.text_metrics.meteor_scores`);
- ``<m>/distinct1``, ``distinct2``: corpus distinct-n; ``<m>/length``, ``tokens``: mean reply
  length in words / policy tokens (EOS counted); ``<m>/eos_rate``: replies that ended on EOS;
- ``<m>/reward/<component>``: mean of each rule component (``text/*`` and the task's own);
  for a task with rules of its own, the rule reward (the docstring task's "total reward"):
  ``<m>/reward/total_with_reference`` (+ CI), the weighted mean of the task's components
  (weights from ``reward.weights``, else the task's defaults:
  :func:`rlhf_lab.reward_components.task_weights`; :func:`.metrics.rule_total`), and
  ``<m>/reward/total`` (+ CI) the same without BLEU, the one ``ref`` has too;
- ``<m>/rec_hit_rate``, ``rec_rate``, ``hallucinated_rate`` (crs): a gold movie / any known
  movie / a title no catalogue knows named
  (:func:`rlhf_lab.tasks.crs.grounding.hallucinated_titles`);
  ``<m>/reward/crs/empathy``: VADER emotional intensity;
- ``<m>/doctest/with_example``, ``doctest/pass_rate``, ``doctest/replies`` (docstring, ``ref``
  too): on the functions that carry examples, the fraction of replies with an example that
  calls the function and the fraction of those examples that pass in the sandbox
  (:func:`rlhf_lab.tasks.docstring.doctest_accounting`);
- ``<m>/judge/<dim>`` (rubric dimensions and ``overall``), ``<m>/judge_failures``;
- ``delta/<p>/<metric>``: policy minus baseline for each metric above;
  ``delta/<p>/rm_score_ci_lo/hi``: paired bootstrap CI of the mean per-prompt gain;
- ``delta/<p>/win_rate_rm`` (+ CI), ``delta/<p>/rm_pvalue_wilcoxon``,
  ``delta/<p>/rm_pvalue_ttest``: policy vs baseline by reward model (Wilcoxon signed-rank is
  the headline test); ``delta/<p>/win_rate_rm_lc``: the length-controlled win rate (the win
  rate at equal reply length in tokens, :func:`.stats.length_controlled_win_rate`);
  ``delta/<p>/win_rate_judge`` and ``delta/<p>/judge_pvalue_*`` the same on the judge's
  ``overall`` rating;
- ``delta/<p>/kl`` (+ CI): KL(policy || baseline) in nats per reply (step 2);
  ``delta/<p>/kl_per_token``: the same per sampled token (:func:`.metrics.kl_per_token`);
  ``delta/<p>/reward/total_with_reference_ci_lo/hi`` and ``..._pvalue_wilcoxon``: the
  paired CI and Wilcoxon test of the rule-reward gain; the same for each task flag's rate
  (``delta/<p>/<flag>_rate_ci_lo/hi``, ``..._pvalue_wilcoxon``) and each of the task's own
  per-reply scores (``delta/<p>/reward/<task>/<rule>_ci_lo/hi``, ``..._pvalue_wilcoxon``);
- ``eval/num_prompts``, ``eval/num_references``: prompts evaluated, of which with a reference;
- ``verdict/<p>/decision`` (proceed / adjust / reconsider, :func:`.gates.check_gates`),
  ``verdict/<p>/decided_by`` (the gate that decided it; ``all`` for proceed),
  ``verdict/<p>/rule`` (``generic``, or ``protocol`` for the task's own, e.g. docstring's
  Phase-1 gates), ``verdict/<p>/failed_gates`` (comma-separated, or ""),
  ``verdict/<p>/pass/<gate>`` (1/0) and ``verdict/<p>/value/<gate>`` (what the gate checked).

Steps 3 and 4 are pure (numbers in, numbers out) and unit-tested without models.
"""

from __future__ import annotations

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
    add_rule_totals,
    build_metrics,
    component_breakdown,
    largest_changes,
)
from rlhf_lab.evaluation.sampling import load_policy, sample_models  # noqa: F401 (tools.generate)
from rlhf_lab.evaluation.scoring import JudgeScorer, reference_of, score_outputs
from rlhf_lab.io import read_jsonl
from rlhf_lab.reward_components import task_weights
from rlhf_lab.reward_scorer import RewardModel


@dataclass(frozen=True)
class EvalPaths:
    """Where the evaluated models live (the stage's DVC deps)."""

    models: Path = Path("models")
    """Each policy and the baseline is ``models/<name>``."""
    reward: Path = Path("models/reward")
    encoder: Path = Path("models/base/encoder")

    def policy(self, name: str) -> Path:
        return self.models / name


def check_model_dirs(paths: EvalPaths, cfg: EvalConfig) -> dict[str, Path]:
    """``name -> models/<name>`` for the baseline and every policy; DataError if one is missing.

    Missing is an error, not a skip: a comparison that silently drops an arm would look
    like a complete one in ``dvc exp show``.
    """
    dirs = {name: paths.policy(name) for name in cfg.models}
    for name, folder in dirs.items():
        if not (folder / "config.json").is_file():
            which = "eval.baseline" if name == cfg.baseline else "eval.policies"
            raise DataError(
                f"{folder}: no model for {which} entry {name!r} (train it first, or remove it "
                f"from {which} in params.yaml)"
            )
    return dirs


def load_prompt_rows(path: str | Path, num_prompts: int) -> list[Row]:
    """The first ``num_prompts`` :class:`~rlhf_lab.data.rows.PromptRow` s of ``path`` (fewer
    if the file is shorter)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: prompt file not found (run prepare_preference and train_recommender first)"
        )
    rows = read_jsonl(path)[:num_prompts]
    if not rows:
        raise DataError(f"{path}: no prompt rows to evaluate")
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), list) or not row["prompt"]:
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}) has no prompt messages")
    return rows


@dataclass
class EvalResult:
    """Everything the stage writes: metrics, per-row outputs, breakdowns and verdicts.

    ``outputs`` holds the baseline, every policy and ``ref``; the per-policy fields are keyed
    by policy name, in ``policies`` order.
    """

    task: str
    baseline: str
    policies: list[str]
    rows: list[Row]
    outputs: dict[str, ModelOutputs]
    kl: dict[str, np.ndarray]
    metrics: dict[str, Any]
    breakdown: dict[str, list[dict[str, Any]]]
    verdicts: dict[str, Verdict]
    gains: dict[str, list[int]]
    losses: dict[str, list[int]]

    @property
    def models(self) -> list[str]:
        """The baseline, then the policies."""
        return [self.baseline, *self.policies]


def finish(
    task: str,
    rows: list[Row],
    outputs: dict[str, ModelOutputs],
    kl: dict[str, np.ndarray],
    cfg: EvalConfig,
) -> EvalResult:
    """Metrics, breakdowns, gates and the largest changes from scored outputs (pure)."""
    base, policies = cfg.baseline, list(cfg.policies)
    refs = [reference_of(r) for r in rows]
    metrics = build_metrics(
        outputs, refs, kl, baseline=base, policies=policies, n_boot=cfg.n_boot, seed=cfg.seed
    )
    verdicts = {p: check_gates(metrics, cfg.gates, p, base, task) for p in policies}
    for p, verdict in verdicts.items():
        metrics.update(verdict.metrics(p))
    changes = {p: largest_changes(rows, outputs, base, p) for p in policies}
    breakdown = {p: component_breakdown(outputs, base, p, cfg.n_boot, cfg.seed) for p in policies}
    return EvalResult(
        task,
        base,
        policies,
        rows,
        outputs,
        kl,
        metrics,
        breakdown,
        verdicts,
        {p: c[0] for p, c in changes.items()},
        {p: c[1] for p, c in changes.items()},
    )


def run_evaluation(
    rows: list[Row],
    params: Params,
    *,
    paths: EvalPaths = EvalPaths(),
    judge_factory: Callable[[], JudgeScorer] | None = None,
) -> EvalResult:
    """Generate with every model, estimate the KLs, score everything, compare and decide.

    One policy is in memory at a time (:func:`sampling.sample_models`), and none is once
    the reward model, encoder and judge load. Reads ``params.eval``, ``task`` and what the
    task's rule components read (``reward``'s length band, the crs ``data.catalogue``).
    """
    cfg, task, system_prompt = params.eval, params.task.name, params.task.system_prompt
    rules = reward_components.RuleContext.from_params(params)  # fails fast on a bad catalogue
    dirs = check_model_dirs(paths, cfg)
    generated, kl = sample_models(dirs, cfg.baseline, cfg.policies, rows, cfg, system_prompt)

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
        context=rules.context,
        task=task,
        reward_model=RewardModel(paths.reward),
        bert_scorer=BertScorer.from_dir(paths.encoder, cfg.bertscore_layers, cfg.batch_size),
        judge=judge_factory() if judge_factory is not None else None,
    )
    # The rule reward is the task's own score (docstring: "total reward"), weighted as
    # analyze_rewards weighs it; a task without rules of its own (chat) has none.
    weights, _ = task_weights(task, params.reward.weights)
    add_rule_totals(outputs, weights)
    return finish(task, rows, outputs, kl, cfg)
