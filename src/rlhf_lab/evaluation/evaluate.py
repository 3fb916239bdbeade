"""The evaluate stage's library: sample SFT and PPO on held-out prompts, score, compare, decide.

Flow (:func:`run_evaluation`; the stage module only loads params and writes the outputs):

1. Both policies answer the same test prompts with the same sampling settings and seed
   (``eval.temperature``, ``eval.max_new_tokens``, ``eval.seed``), batched, so the only
   difference between the two reply sets is the model.
2. KL(PPO || SFT) on the test prompts: the k1 estimator summed over each PPO reply's tokens,
   ``Σ_t log p_ppo(y_t | ·) - log p_sft(y_t | ·)`` with ``y ~ p_ppo``, logits divided by the
   sampling temperature (the same convention as PPO training, [N-details] "scale the logits by
   sampling temperature"), then averaged over prompts (nats per reply).
3. Per reply: the reward model (normalised score), every reward component registered for the
   task (``text/*`` always, ``crs/*`` / ``docstring/*`` by task; see ``rlhf_lab.rewards``),
   BERTScore F1 against the reference, and optionally the judge's rubric dimensions. The
   human references get the same reward-model and component scores (except components that
   compare with the reference, which would score a reference against itself).
4. Corpus metrics per model, paired comparisons PPO vs SFT, and the gates' verdict
   (:func:`check_gates`) as one flat dict of namespaced metrics (:func:`build_metrics`).

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

Everything from step 4 on is pure (numbers in, numbers out) and unit-tested without models.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_lab import models, rewards, ui
from rlhf_lab.config import EvalConfig, EvalGates
from rlhf_lab.errors import DataError
from rlhf_lab.evaluation import stats, text_metrics
from rlhf_lab.evaluation.bertscore import BertScorer
from rlhf_lab.generation import (
    chat_prompt_text,
    default_device,
    generate,
    next_token_logits,
    position_ids,
)
from rlhf_lab.io import read_jsonl
from rlhf_lab.ppo.core import logprobs_from_logits
from rlhf_lab.reward_model import RewardModel
from rlhf_lab.rewards import Row
from rlhf_lab.tasks import crs
from rlhf_lab.tasks.text import length_score

MODELS = ("sft", "ppo")
"""The two policies compared; ``ref`` (the human references) is scored alongside."""
REWARD_MODEL = "reward_model"
"""Component name of the reward model in score tables, histograms and samples."""
OVERALL = "overall"
"""Judge key of the mean over a reply's rubric dimensions (``rlhf_lab.judge.OVERALL``)."""
CONFIDENCE = 0.95
"""Level of every confidence interval in the metrics."""
MAX_PROMPT_TOKENS = 1024
"""Longest prompt (chat template applied) the policies see; older tokens are cut."""

JudgeScorer = Callable[[Sequence[Row], Sequence[str]], list[Mapping[str, float | None]]]
"""Scores (prompt row, reply) pairs: one ``{dimension: rating or None, "overall": ...}`` per
reply. ``rlhf_lab.judge.Judge.score`` is one; tests pass a plain function."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


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


def reference_of(row: Row) -> str | None:
    """The row's reference reply, or None when it has none (null, missing or blank)."""
    ref = row.get("reference")
    return ref if isinstance(ref, str) and ref.strip() else None


def reward_components(task: str) -> list[str]:
    """Registered rule components relevant to ``task``: ``text/*`` and ``<task>/*``."""
    return [n for n in rewards.names() if n.startswith(("text/", f"{task}/"))]


def is_reference_based(component: str) -> bool:
    """Does ``component`` compare the reply with the row's reference (BLEU-like)?

    Such components are not scored for the references themselves (a reference would be
    compared with itself) and are only meaningful on rows that have a reference.
    """
    return component.rsplit("/", 1)[-1].startswith(("bleu", "rouge"))


def component_scores(
    name: str, replies: Sequence[str], rows: Sequence[Row], length_band: Sequence[int]
) -> list[float]:
    """One registered component on (reply, row) pairs.

    ``text/length`` is scored with ``reward.length_band`` rather than the registered
    default, so evaluate measures the band PPO was trained against.
    """
    if name == "text/length":
        lo, hi = length_band
        return [length_score(len(r.split()), lo, hi) for r in replies]
    return [float(x) for x in rewards.get(name)(list(replies), list(rows))]


# --------------------------------------------------------------------------------------------
# Per-model outputs
# --------------------------------------------------------------------------------------------


@dataclass
class ModelOutputs:
    """One model's (or the references') replies to the eval rows and their per-row scores.

    Every array is aligned with the rows; NaN marks "not scored" (a reference-based metric on
    a row without reference, a row with no reference for ``ref``, a failed judge rating).
    """

    texts: list[str]
    """Replies (``""`` where a reference is missing)."""
    valid: np.ndarray
    """Rows this output exists for (all for the policies; rows with a reference for ref)."""
    n_tokens: list[int] | None = None
    """Policy tokens per reply, EOS included (None for the references)."""
    eos: list[bool] | None = None
    """Whether the reply ended with EOS (None for the references)."""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Component name (``reward_model``, ``text/bleu``...) -> per-row score."""
    bertscore_f1: np.ndarray | None = None
    """BERTScore F1 against the reference per row (NaN without reference)."""
    judge: dict[str, np.ndarray] | None = None
    """Judge dimension (and ``overall``) -> per-row rating (NaN where the judge failed)."""
    task_flags: dict[str, np.ndarray] = field(default_factory=dict)
    """Task-specific 0/1 outcomes per row, e.g. crs ``rec_hit``, ``rec_any``."""


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _with_ci(out: dict[str, Any], key: str, values: np.ndarray, n_boot: int, seed: int) -> None:
    """``key`` (mean), ``key_ci_lo`` and ``key_ci_hi`` (percentile bootstrap) into ``out``."""
    vals = _finite(values)
    if vals.size == 0:
        return
    mean, lo, hi = stats.mean_ci(vals, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
    out[key], out[f"{key}_ci_lo"], out[f"{key}_ci_hi"] = mean, lo, hi


def reference_metrics(hyps: Sequence[str], refs: Sequence[str | None]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu; BLEU-1/2/4) and mean ROUGE-L F1 on the rows with a reference.

    ``bleu`` is sacrebleu's standard corpus BLEU (equal to ``bleu4``; the gates read it).
    Empty when no row has a reference.
    """
    pairs = [(h, r) for h, r in zip(hyps, refs, strict=True) if r is not None]
    if not pairs:
        return {}
    h, r = [p[0] for p in pairs], [p[1] for p in pairs]
    out = {f"bleu{n}": text_metrics.bleu_n(h, r, n) for n in (1, 2, 4)}
    out["bleu"] = text_metrics.bleu(h, r)
    out["rougeL"] = text_metrics.rouge_l(h, r)
    return out


def summarise_model(
    out: ModelOutputs,
    refs: Sequence[str | None] | None,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Corpus-level metrics of one model (keys without the ``sft/`` prefix).

    ``refs`` is None for the references themselves: no reference-based metrics then.
    """
    texts = [t for t, ok in zip(out.texts, out.valid, strict=True) if ok]
    m: dict[str, Any] = {}
    if REWARD_MODEL in out.scores:
        _with_ci(m, "rm_score", out.scores[REWARD_MODEL], n_boot, seed)
    if refs is not None:
        m.update(reference_metrics(out.texts, refs))
    if out.bertscore_f1 is not None:
        _with_ci(m, "bertscore_f1", out.bertscore_f1, n_boot, seed)
    m["distinct1"] = text_metrics.distinct_n(texts, 1)
    m["distinct2"] = text_metrics.distinct_n(texts, 2)
    m["length"] = text_metrics.mean_length(texts)
    if out.n_tokens is not None:
        m["tokens"] = float(np.mean(out.n_tokens))
    if out.eos is not None:
        m["eos_rate"] = float(np.mean(out.eos))
    for name, values in out.scores.items():
        if name != REWARD_MODEL and (mean := _nanmean(values)) is not None:
            m[f"reward/{name}"] = mean
    for name, flags in out.task_flags.items():
        if (mean := _nanmean(flags)) is not None:
            m[f"{name}_rate"] = mean
    if out.judge is not None:
        for dim, values in out.judge.items():
            if (mean := _nanmean(values)) is not None:
                m[f"judge/{dim}"] = mean
        overall = out.judge.get(OVERALL)
        if overall is not None:
            m["judge_failures"] = int(np.sum(~np.isfinite(overall)))
    return m


# --------------------------------------------------------------------------------------------
# Comparison and verdict
# --------------------------------------------------------------------------------------------


def paired_comparison(
    prefix: str, ppo: np.ndarray, sft: np.ndarray, n_boot: int, seed: int
) -> dict[str, float]:
    """Win rate of PPO over SFT with a 95% paired-bootstrap CI, and paired-test p-values.

    Only prompts where both scores are finite take part. Keys: ``win_rate_<prefix>`` (+ CI),
    ``<prefix>_pvalue_wilcoxon`` (Wilcoxon signed-rank, two-sided; the headline test: it
    does not assume normal score differences) and ``<prefix>_pvalue_ttest`` (paired t-test).
    """
    ppo, sft = np.asarray(ppo, dtype=np.float64), np.asarray(sft, dtype=np.float64)
    both = np.isfinite(ppo) & np.isfinite(sft)
    if not both.any():
        return {}
    a, b = ppo[both], sft[both]
    rate, lo, hi = stats.win_rate_ci(a, b, n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
    test = stats.paired_test(a, b)
    return {
        f"win_rate_{prefix}": rate,
        f"win_rate_{prefix}_ci_lo": lo,
        f"win_rate_{prefix}_ci_hi": hi,
        f"{prefix}_pvalue_wilcoxon": test["wilcoxon_p"],
        f"{prefix}_pvalue_ttest": test["ttest_p"],
    }


@dataclass(frozen=True)
class GateResult:
    """One gate: its value on this run, threshold, outcome and kind."""

    name: str
    kind: str
    """'hard' (reward gain, KL) or 'soft' (BLEU and distinct-2 drops)."""
    value: float | None
    """None when the gate could not be measured (BLEU without references): it passes."""
    threshold: float
    passed: bool
    rule: str
    """The pass condition in words, for the report."""


@dataclass(frozen=True)
class Verdict:
    """The proceed / adjust / reconsider decision and the gates behind it."""

    decision: str
    gates: tuple[GateResult, ...]

    @property
    def failed(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def metrics(self) -> dict[str, Any]:
        """``verdict/decision``, ``verdict/failed_gates``, ``verdict/pass/<gate>`` (0/1)..."""
        out: dict[str, Any] = {
            "verdict/decision": self.decision,
            "verdict/failed_gates": ",".join(self.failed),
        }
        for g in self.gates:
            out[f"verdict/pass/{g.name}"] = int(g.passed)
            if g.value is not None:
                out[f"verdict/value/{g.name}"] = g.value
        return out


def decide(failed_hard: Sequence[str], failed_soft: Sequence[str]) -> str:
    """The verdict rule (also in ``EvalGates``'s docstring and the report).

    ``proceed``: every gate passes. ``adjust``: the hard gates pass and exactly one soft gate
    fails. ``reconsider``: a hard gate fails (no significant reward gain, KL too large, or a
    BERTScore loss), or more than one soft gate fails.
    """
    if failed_hard or len(failed_soft) > 1:
        return "reconsider"
    if failed_soft:
        return "adjust"
    return "proceed"


def check_gates(metrics: Mapping[str, Any], gates: EvalGates) -> Verdict:
    """Check ``eval.gates`` against the metrics of :func:`build_metrics` (without verdict)."""
    gain = float(metrics["delta/rm_score"])
    kl = float(metrics["delta/kl_ppo_sft"])
    bleu_drop = None
    if "sft/bleu" in metrics and "ppo/bleu" in metrics:
        bleu_drop = float(metrics["sft/bleu"]) - float(metrics["ppo/bleu"])
    d2_sft, d2_ppo = float(metrics["sft/distinct2"]), float(metrics["ppo/distinct2"])
    # Relative to SFT's distinct-2 (the gate is "a fraction of SFT's"); SFT at 0 cannot drop.
    d2_drop = (d2_sft - d2_ppo) / d2_sft if d2_sft > 0 else 0.0
    eos_sft, eos_ppo = metrics.get("sft/eos_rate"), metrics.get("ppo/eos_rate")
    eos_drop = None
    if eos_sft is not None and eos_ppo is not None:
        eos_drop = (eos_sft - eos_ppo) / eos_sft if eos_sft > 0 else 0.0
    pvalue = metrics.get("delta/rm_pvalue_wilcoxon")
    pvalue = None if pvalue is None or not np.isfinite(pvalue) else float(pvalue)
    # PPO's mean minus the low end of SFT's CI: negative = below what SFT's noise explains.
    bs_margin = None
    if gates.bertscore_within_ci and "ppo/bertscore_f1" in metrics:
        lo = metrics.get("sft/bertscore_f1_ci_lo")
        if lo is not None:
            bs_margin = float(metrics["ppo/bertscore_f1"]) - float(lo)
    results = (
        GateResult(
            "reward_gain",
            "hard",
            gain,
            gates.min_reward_gain,
            gain > gates.min_reward_gain,
            f"PPO - SFT mean reward-model score > {gates.min_reward_gain:g}",
        ),
        GateResult(
            "significance",
            "hard",
            pvalue,
            gates.max_rm_pvalue,
            pvalue is not None and pvalue < gates.max_rm_pvalue,
            f"paired Wilcoxon p-value of the reward-model gain < {gates.max_rm_pvalue:g}",
        ),
        GateResult(
            "kl",
            "hard",
            kl,
            gates.max_kl,
            kl < gates.max_kl,
            f"KL(PPO || SFT) per reply < {gates.max_kl:g} nats",
        ),
        GateResult(
            "bertscore",
            "hard",
            bs_margin,
            0.0,
            bs_margin is None or bs_margin >= 0.0,
            "PPO BERTScore F1 >= lower end of SFT's 95% CI (n/a without references)",
        ),
        GateResult(
            "bleu_drop",
            "soft",
            bleu_drop,
            gates.max_bleu_drop,
            bleu_drop is None or bleu_drop <= gates.max_bleu_drop,
            f"SFT - PPO corpus BLEU <= {gates.max_bleu_drop:g} points (n/a without references)",
        ),
        GateResult(
            "distinct2_drop",
            "soft",
            d2_drop,
            gates.max_distinct2_drop,
            d2_drop <= gates.max_distinct2_drop,
            f"(SFT - PPO distinct-2) / SFT distinct-2 <= {gates.max_distinct2_drop:g}",
        ),
        GateResult(
            "eos_rate_drop",
            "soft",
            eos_drop,
            gates.max_eos_rate_drop,
            eos_drop is None or eos_drop <= gates.max_eos_rate_drop,
            f"(SFT - PPO EOS rate) / SFT EOS rate <= {gates.max_eos_rate_drop:g}",
        ),
    )
    failed_hard = [g.name for g in results if g.kind == "hard" and not g.passed]
    failed_soft = [g.name for g in results if g.kind == "soft" and not g.passed]
    return Verdict(decide(failed_hard, failed_soft), results)


def build_metrics(
    outputs: Mapping[str, ModelOutputs],
    refs: Sequence[str | None],
    kl: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Every metric except the verdict: per model, references, and PPO-vs-SFT deltas."""
    sft, ppo = outputs["sft"], outputs["ppo"]
    per_model = {name: summarise_model(outputs[name], refs, n_boot, seed) for name in MODELS}
    metrics: dict[str, Any] = {
        "eval/num_prompts": len(refs),
        "eval/num_references": sum(r is not None for r in refs),
    }
    for name, m in per_model.items():
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
    if "ref" in outputs and outputs["ref"].valid.any():
        ref_m = summarise_model(outputs["ref"], None, n_boot, seed)
        metrics.update({f"ref/{k}": v for k, v in ref_m.items()})

    # delta/<metric>: PPO minus SFT for every metric both have (CI bounds of the two
    # means do not subtract into a CI of the difference; the paired CIs are below).
    for key, value in per_model["ppo"].items():
        other = per_model["sft"].get(key)
        if key.endswith(("_ci_lo", "_ci_hi")) or other is None or key == "judge_failures":
            continue
        metrics[f"delta/{key}"] = float(value) - float(other)

    rm_ppo, rm_sft = ppo.scores[REWARD_MODEL], sft.scores[REWARD_MODEL]
    # CI of the mean *paired* difference: far tighter than the two marginal CIs suggest.
    _, lo, hi = stats.mean_ci(rm_ppo - rm_sft, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
    metrics["delta/rm_score_ci_lo"], metrics["delta/rm_score_ci_hi"] = lo, hi
    metrics.update(
        {f"delta/{k}": v for k, v in paired_comparison("rm", rm_ppo, rm_sft, n_boot, seed).items()}
    )
    if sft.judge is not None and ppo.judge is not None and OVERALL in ppo.judge:
        judged = paired_comparison("judge", ppo.judge[OVERALL], sft.judge[OVERALL], n_boot, seed)
        metrics.update({f"delta/{k}": v for k, v in judged.items()})
    _with_ci(metrics, "delta/kl_ppo_sft", kl, n_boot, seed)
    return metrics


def component_breakdown(
    outputs: Mapping[str, ModelOutputs], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Per reward component: SFT, PPO and reference means, PPO - SFT with a paired 95% CI.

    Rows are sorted by the size of the change (largest gain first); the report shows this
    table and a bar chart of it, so a reward-model gain bought with, say, a length change is
    visible next to it.
    """
    sft, ppo, ref = outputs["sft"], outputs["ppo"], outputs.get("ref")
    rows = []
    for name in sft.scores:
        a, b = ppo.scores[name], sft.scores[name]
        both = np.isfinite(a) & np.isfinite(b)
        if not both.any():
            continue
        diff = a[both] - b[both]
        _, lo, hi = stats.mean_ci(diff, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
        p = stats.paired_test(a[both], b[both])["wilcoxon_p"]
        ref_mean = _nanmean(ref.scores[name]) if ref is not None and name in ref.scores else None
        rows.append(
            {
                "component": name,
                "sft": float(b[both].mean()),
                "ppo": float(a[both].mean()),
                "ref": ref_mean,
                "delta": float(diff.mean()),
                "delta_ci_lo": lo,
                "delta_ci_hi": hi,
                "pvalue_wilcoxon": p,
                "n": int(both.sum()),
            }
        )
    return sorted(rows, key=lambda r: -r["delta"])


def largest_changes(
    rows: Sequence[Row], outputs: Mapping[str, ModelOutputs], k: int = 5
) -> tuple[list[int], list[int]]:
    """Row indices of the ``k`` largest PPO gains and ``k`` largest losses by reward model."""
    diff = outputs["ppo"].scores[REWARD_MODEL] - outputs["sft"].scores[REWARD_MODEL]
    order = np.argsort(-diff, kind="stable")
    gains = [int(i) for i in order if diff[i] > 0][:k]
    losses = [int(i) for i in order[::-1] if diff[i] < 0][:k]
    return gains, losses


# --------------------------------------------------------------------------------------------
# Generation and KL (models needed)
# --------------------------------------------------------------------------------------------


def load_policy(model_dir: str | Path) -> tuple[Any, Any]:
    """A policy directory as (model in eval mode, left-padding tokenizer)."""
    tok = models.load_tokenizer(model_dir, padding_side="left")
    model = models.load_causal_lm(model_dir).eval()
    models.ensure_pad_token(tok, model)
    return model.to(default_device()), tok


@torch.inference_mode()
def sequence_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    reply_ids: Sequence[Sequence[int]],
    *,
    temperature: float,
    pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """``Σ_t log p(reply_t | prompt, reply_<t)`` per (prompt, reply), logits / ``temperature``.

    Sequences are left-padded with explicit position ids (as generation sees them), so every
    reply ends at the last column and only the last ``max reply length + 1`` logits are
    needed (``logits_to_keep``): a [batch, reply, vocab] slice instead of the full
    [batch, prompt + reply, vocab] tensor, which for a 49k vocabulary and 1k-token prompts
    would not fit in memory.
    """
    out = np.zeros(len(reply_ids), dtype=np.float64)
    device = next(model.parameters()).device
    for start in range(0, len(reply_ids), batch_size):
        p_chunk = prompt_ids[start : start + batch_size]
        r_chunk = reply_ids[start : start + batch_size]
        r_max = max(len(r) for r in r_chunk)
        if r_max == 0:
            continue
        seqs = [list(p) + list(r) for p, r in zip(p_chunk, r_chunk, strict=True)]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        reply_mask = torch.zeros((len(seqs), r_max), dtype=torch.float32)
        for i, (s, r) in enumerate(zip(seqs, r_chunk, strict=True)):
            input_ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
            if r:
                reply_mask[i, r_max - len(r) :] = 1.0
        pos = position_ids(mask)
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
            "position_ids": pos.to(device),
        }
        logits = next_token_logits(model, inputs, r_max)  # float32 head, reply positions only
        logp = logprobs_from_logits(logits / temperature, input_ids[:, -r_max:].to(device))
        # where, not a product: a padding position's logits can be NaN (nothing to attend to)
        logp = torch.where(reply_mask > 0, logp.cpu(), torch.zeros_like(reply_mask))
        out[start : start + len(r_chunk)] = logp.sum(-1).double().numpy()
    return out


def kl_temperature(temperature: float) -> float:
    """Temperature the KL is computed at: the sampling one; 1 for greedy decoding.

    With greedy decoding (``eval.temperature: 0``) the replies are not samples of either
    policy, so the "KL" is only the log-ratio on the greedy reply, at temperature 1.
    """
    return temperature if temperature > 0 else 1.0


@dataclass(frozen=True)
class Generated:
    """A policy's replies, with the token ids the KL is computed on."""

    texts: list[str]
    n_tokens: list[int]
    eos: list[bool]
    prompt_ids: list[list[int]]
    reply_ids: list[list[int]]


def generate_replies(
    model: Any,
    tok: Any,
    rows: Sequence[Row],
    cfg: EvalConfig,
    system_prompt: str | None,
    desc: str,
) -> Generated:
    """Sample one reply per row with ``rlhf_lab.generation`` under ``eval``'s settings."""
    prompts = [row["prompt"] for row in rows]
    samples = generate(
        model,
        tok,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        system_prompt=system_prompt,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        desc=desc,
    )
    prompt_ids, reply_ids = generation_token_ids(tok, prompts, samples, system_prompt)
    return Generated(
        texts=[s.text for s in samples],
        n_tokens=[int(s.n_tokens) for s in samples],
        eos=[bool(s.eos) for s in samples],
        prompt_ids=prompt_ids,
        reply_ids=reply_ids,
    )


def generation_token_ids(
    tok: Any,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    samples: Sequence[Any],
    system_prompt: str | None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, reply ids) of generated samples, as the policy saw and produced them.

    Prompts are encoded exactly as ``rlhf_lab.generation.generate`` does (chat template, no
    extra special tokens, the last :data:`MAX_PROMPT_TOKENS`). A ``Sample`` carries only the
    decoded, stripped text, so the reply is re-encoded (plus EOS when the sample stopped on
    it); a sampled tokenisation is almost always the canonical one the tokenizer gives back.
    If ``Sample`` gains ``token_ids`` those are used instead: the exact sampled tokens.
    """
    prompt_ids = []
    for p in prompts:
        text = chat_prompt_text(tok, list(p), system_prompt)
        prompt_ids.append(tok(text, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:])
    reply_ids = []
    for s in samples:
        ids = getattr(s, "token_ids", None)
        if ids is None:
            ids = tok(s.text, add_special_tokens=False)["input_ids"] if s.text else []
            if s.eos:
                ids = [*ids, tok.eos_token_id]
        reply_ids.append(list(ids))
    return prompt_ids, reply_ids


def kl_on_samples(
    ppo_model: Any,
    sft_model: Any,
    generated: Generated,
    *,
    temperature: float,
    pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """Per-prompt k1 estimate of KL(PPO || SFT) on PPO's own samples (nats per reply)."""
    t = kl_temperature(temperature)
    kw = {"temperature": t, "pad_id": pad_id, "batch_size": batch_size}
    logp_ppo = sequence_logprobs(ppo_model, generated.prompt_ids, generated.reply_ids, **kw)
    logp_sft = sequence_logprobs(sft_model, generated.prompt_ids, generated.reply_ids, **kw)
    return logp_ppo - logp_sft


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _aligned(values: Sequence[float], valid: np.ndarray) -> np.ndarray:
    """Scores of the valid rows spread back over all rows (NaN elsewhere)."""
    out = np.full(valid.shape, np.nan)
    out[valid] = np.asarray(values, dtype=np.float64)
    return out


def score_outputs(
    outputs: Mapping[str, ModelOutputs],
    rows: Sequence[Row],
    *,
    task: str,
    length_band: Sequence[int],
    reward_model: Any,
    bert_scorer: Any | None,
    judge: JudgeScorer | None,
    rm_batch_size: int = 32,
) -> None:
    """Fill each output's ``scores``, ``bertscore_f1``, ``judge`` and ``task_flags`` in place.

    ``reward_model`` is a ``rlhf_lab.reward_model.RewardModel`` (or anything with its
    ``score``); ``bert_scorer`` a :class:`~rlhf_lab.evaluation.bertscore.BertScorer`.
    The judge scores the two policies only (rating the references too would double its cost).
    """
    refs = [reference_of(r) for r in rows]
    has_ref = np.array([r is not None for r in refs])
    names = reward_components(task)
    for who, out in outputs.items():
        idx = np.flatnonzero(out.valid)
        sub_rows = [rows[i] for i in idx]
        sub_texts = [out.texts[i] for i in idx]
        prompts = [r["prompt"] for r in sub_rows]
        rm = reward_model.score(prompts, sub_texts, batch_size=rm_batch_size)
        out.scores[REWARD_MODEL] = _aligned([float(x) for x in rm], out.valid)
        for name in names:
            if who == "ref" and is_reference_based(name):
                continue
            valid = out.valid & has_ref if is_reference_based(name) else out.valid
            sel = np.flatnonzero(valid)
            vals = component_scores(
                name, [out.texts[i] for i in sel], [rows[i] for i in sel], length_band
            )
            out.scores[name] = _aligned(vals, valid)
        if task == "crs":
            pairs = list(zip(sub_texts, sub_rows, strict=True))
            hits = [float(crs.recommendation_hit(t, r)) for t, r in pairs]
            recs = [float(crs.recommends_any(t, r)) for t, r in pairs]
            out.task_flags["rec_hit"] = _aligned(hits, out.valid)
            out.task_flags["rec"] = _aligned(recs, out.valid)
        if who == "ref":
            continue
        if bert_scorer is not None and has_ref.any():
            sel = np.flatnonzero(has_ref)
            bs = bert_scorer.score([out.texts[i] for i in sel], [refs[i] for i in sel])
            out.bertscore_f1 = _aligned(bs.f1, has_ref)
        if judge is not None:
            out.judge = judge_table(judge(list(rows), list(out.texts)))


def judge_table(ratings: Sequence[Mapping[str, float | None]]) -> dict[str, np.ndarray]:
    """Per-reply judge ratings as ``dimension -> array`` (None becomes NaN)."""
    dims: list[str] = []
    for r in ratings:
        dims.extend(d for d in r if d not in dims)
    return {
        d: np.array(
            [
                float(v) if (v := r.get(d)) is not None and math.isfinite(v) else np.nan
                for r in ratings
            ]
        )
        for d in dims
    }


# --------------------------------------------------------------------------------------------
# The whole stage, minus I/O
# --------------------------------------------------------------------------------------------


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
    cfg: EvalConfig,
    *,
    task: str,
    system_prompt: str | None,
    length_band: Sequence[int],
    paths: EvalPaths = EvalPaths(),
    judge_factory: Callable[[], JudgeScorer] | None = None,
) -> EvalResult:
    """Generate with both policies, estimate the KL, score everything, compare and decide.

    Both policies stay in memory until the KL is estimated (it needs each one's log-probs of
    PPO's samples); they are released before the reward model, encoder and judge load.
    """
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
        task=task,
        length_band=length_band,
        reward_model=RewardModel(paths.reward),
        bert_scorer=BertScorer.from_dir(paths.encoder, cfg.bertscore_layers, cfg.batch_size),
        judge=judge_factory() if judge_factory is not None else None,
    )
    return finish(task, rows, outputs, kl, cfg)
