"""analyze_rewards' library: do the task's rule rewards tell good replies from bad ones?

A reward that PPO optimises must rank a right answer above a wrong one for the same prompt,
or the policy learns whatever the reward actually pays for. The check:

1. Rows: prompt rows (``data/prompts/*.jsonl``) or a raw source file read by the data
   readers (``../shared/data/docstring/valid.jsonl.gz``), kept when they have what the task
   needs: a reference and the function source (docstring), or a reference that recommends a
   gold movie (crs).
2. For each row the *good* reply is the human reference; the *bad* ones are made from it on
   purpose (:func:`rlhf_lab.tasks.docstring.bad_docstring_variants`: empty, generic one-liner,
   the function's name, made-up parameter names, the reference with its parameters renamed,
   another function's docstring; :func:`rlhf_lab.tasks.crs.bad_reply_variants`: empty,
   generic, the reference with its movies removed, with a non-gold movie swapped in).
3. Every ``<task>/*`` component (:func:`rlhf_lab.reward_components.build`) scores every
   reply. The *total* is their
   weighted mean with the weights of ``reward.weights`` (the task's defaults when it names none
   of them), over the components that do not compare with the reference: the good reply *is*
   the reference, so BLEU would score it 1 by construction. ``total_with_reference`` adds them
   back (what PPO sees, where a policy reply is compared with the reference).
4. Gap = mean over (good, bad) pairs of the same row of ``good - bad``, per component, per bad
   kind and for the total; pair accuracy = how often the good reply's total is higher (ties
   count half). The check passes when the total gap exceeds :data:`MIN_GAP`.

Optionally, ``reports/samples.jsonl`` from ``evaluate`` gets the same component breakdown for
the SFT and PPO replies and the references (joined to the rows by id for the task's meta).

Metrics (flat, namespaced; ``<c>`` is a component such as ``docstring/param_coverage``):
``analyze/rows``, ``analyze/pairs``, ``analyze/gap/total``, ``analyze/gap/<c>``,
``analyze/good/<c>``, ``analyze/bad/<c>`` (and ``.../total``), ``analyze/gap_by_kind/<kind>``,
``analyze/pairs_by_kind/<kind>``, ``analyze/pair_accuracy``, ``analyze/pass``;
``analyze/samples/<who>/<c>`` and ``.../total`` for ``who`` in sft, ppo, ref.

Code is only ever parsed with :mod:`ast` by the docstring rewards, never executed.

The plot data, PNGs and markdown summary of a check are
:mod:`rlhf_lab.evaluation.reward_check_report`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab import reward_components
from rlhf_lab.config import DataConfig, Params, TaskConfig
from rlhf_lab.data.rows import Row
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.reward_components import TOTAL, TOTAL_REF, is_reference_based
from rlhf_lab.tasks import registry as task_registry

MIN_GAP = 0.2
"""The total gap (good - bad, on [0, 1]) the check asks for."""
TASKS = tuple(n for n, t in task_registry.TASKS.items() if t.reward_check is not None)
"""Tasks with rule rewards to check (:attr:`rlhf_lab.tasks.base.Task.reward_check`)."""
GOOD = "good"
"""Kind of the reference reply in the scored items."""
REFERENCE = "ref"
"""The human references' reply set in a samples breakdown (scored without the reference-based
components, which would match themselves)."""

ComponentFn = Callable[[Sequence[str], Sequence[Row]], Sequence[float]]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """The rows the check runs on, and how many were left out."""

    rows: list[Row]
    source: str
    """The input file."""
    kind: str
    """``prompt rows`` or the source format that was parsed (``docstring``, ``redial``)."""
    skipped: int = 0
    """Rows without what the task needs (no reference, no code, no gold movie)."""
    invalid: int = 0
    """Source rows the data readers rejected (bad JSON, too long, ...)."""


def _is_prompt_row(value: Mapping[str, Any]) -> bool:
    return isinstance(value.get("prompt"), list) and "reference" in value


def read_prompt_rows(path: str | Path) -> list[Row]:
    """Prompt rows of a ``.jsonl[.gz]`` file; the first bad line is a DataError naming it."""
    from rlhf_lab.data.readers import read_jsonl

    rows: list[Row] = []
    for rec in read_jsonl(path):
        if rec.error is not None:
            raise DataError(f"{rec.origin}: {rec.error}")
        value = rec.value or {}
        if not _is_prompt_row(value):
            raise DataError(f"{rec.origin}: not a prompt row (needs 'prompt' and 'reference')")
        if not isinstance(value.get("meta", {}), dict):
            raise DataError(f"{rec.origin}: meta: expected an object")
        rows.append(value)
    return rows


def read_source_rows(
    path: str | Path, task: str, data: DataConfig, limit: int
) -> tuple[list[Row], str, int]:
    """Prompt rows parsed from a raw source file as ``prepare_preference`` would parse them.

    Returns (rows, format, rejected rows). Uses ``data.max_chars``/``max_turns``/``catalogue``
    and ``data.max_invalid_fraction``; ``limit`` rows are kept (a deterministic subsample, as
    ``data.max_examples``; 0 keeps all).
    """
    from rlhf_lab.data.prepare import load_examples, open_source

    cfg = data.model_copy(update={"source": str(path), "format": "auto", "max_examples": limit})
    source = open_source(cfg, TaskConfig(name=task))  # type: ignore[arg-type]
    want = task_registry.get_task(task).formats
    if source.format not in want:
        raise DataError(
            f"{path}: reads as {source.format} rows; the {task} task needs {' or '.join(want)}"
        )
    loaded = load_examples(source, cfg, task_registry.FORMAT_PARSERS)
    if not loaded.examples or loaded.invalid_fraction > cfg.max_invalid_fraction:
        first = loaded.rejected[0].describe() if loaded.rejected else f"{path}: no rows"
        raise DataError(
            f"{first} — {len(loaded.rejected)} of {loaded.rows_seen} rows are invalid "
            f"(data.max_invalid_fraction {cfg.max_invalid_fraction})"
        )
    return [ex.to_prompt_row() for ex in loaded.examples], source.format, len(loaded.rejected)


def is_usable(row: Row, task: str) -> bool:
    """Does ``row`` have what the check needs: a reference, and the code / a gold movie?"""
    ref = row.get("reference")
    if not isinstance(ref, str) or not ref.strip():
        return False
    check = task_registry.get_task(task).reward_check
    return check is not None and check.usable(row)


def load_inputs(path: str | Path, task: str, data: DataConfig, limit: int = 0) -> Inputs:
    """Rows from prompt rows or a raw source file (which one: the first row's keys)."""
    from rlhf_lab.data.readers import peek, read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        first, records = peek(read_jsonl(path))
        if first is None:
            bad = next((r for r in records if r.error is not None), None)
            raise DataError(f"{bad.origin}: {bad.error}" if bad else f"{path}: no rows")
        if _is_prompt_row(first):
            rows = read_prompt_rows(path)
            kept = [r for r in rows if is_usable(r, task)]
            chosen = kept[:limit] if limit else kept
            return Inputs(chosen, str(path), "prompt rows", skipped=len(rows) - len(kept))
    rows, fmt, invalid = read_source_rows(path, task, data, limit)
    kept = [r for r in rows if is_usable(r, task)]
    return Inputs(kept, str(path), fmt, skipped=len(rows) - len(kept), invalid=invalid)


# --------------------------------------------------------------------------------------------
# Components and weights
# --------------------------------------------------------------------------------------------


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(
            f"analyze_rewards checks the rule rewards of the {' and '.join(TASKS)} tasks; "
            f"task is {task!r} (set task.name or pass --task)"
        )
    return task


def task_components(task: str) -> list[str]:
    """The task's own rule components (``<task>/*``), in the factory's order."""
    return reward_components.task_rules(task)


def component_functions(task: str, params: Params) -> dict[str, ComponentFn]:
    """The task's component functions from the one factory; crs's recommendation reads
    ``data.catalogue`` whatever ``params.task.name`` says (``--task`` may override it)."""
    ctx = reward_components.RuleContext.from_params(params, task)
    return reward_components.build(task_components(task), params, context=ctx)


def normalised(weights: Mapping[str, float], reference_free: bool) -> dict[str, float]:
    """``weights`` summing to 1, without reference-based components when ``reference_free``."""
    kept = {
        n: w for n, w in weights.items() if w > 0 and not (reference_free and is_reference_based(n))
    }
    total = sum(kept.values())
    return {n: w / total for n, w in kept.items()} if total > 0 else {}


def score(
    texts: Sequence[str], rows: Sequence[Row], fns: Mapping[str, ComponentFn]
) -> dict[str, np.ndarray]:
    """``component -> scores`` of each text as a reply to its row."""
    return {
        name: np.asarray(fn(list(texts), list(rows)), dtype=np.float64) for name, fn in fns.items()
    }


def weighted(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Σ w_c · score_c per text (``weights`` already normalised); NaN if none apply."""
    if not weights:
        n = len(next(iter(scores.values()))) if scores else 0
        return np.full(n, np.nan)
    return sum(w * scores[n] for n, w in weights.items())  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def bad_variants(rows: Sequence[Row], task: str) -> list[dict[str, str]]:
    """Bad replies by kind, one dict per row (the next row's reference is "another function's")."""
    check = task_registry.get_task(task).reward_check
    if check is None:
        raise ConfigError(f"task {task!r} has no rule rewards to check")
    return check.bad_variants(rows)


@dataclass
class RewardCheck:
    """Every reply scored: the references (kind ``good``) and the bad variants."""

    task: str
    components: list[str]
    weights: dict[str, float]
    """Normalised weights of the total (reference-free components)."""
    weights_ref: dict[str, float]
    """Normalised weights of ``total_with_reference``."""
    weights_source: str
    row_of: np.ndarray
    """Row index of each scored item."""
    kinds: list[str]
    texts: list[str]
    scores: dict[str, np.ndarray]
    """Component (plus ``total`` and ``total_with_reference``) -> score per item."""
    rows: list[Row]
    metrics: dict[str, Any] = field(default_factory=dict)

    def pairs(self, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(good item index, bad item index) of every pair, or of one bad kind."""
        good_of = {
            int(r): i
            for i, (r, k) in enumerate(zip(self.row_of, self.kinds, strict=True))
            if k == GOOD
        }
        bad = [i for i, k in enumerate(self.kinds) if k != GOOD and (kind is None or k == kind)]
        return np.array([good_of[int(self.row_of[i])] for i in bad], dtype=int), np.array(
            bad, dtype=int
        )

    def bad_kinds(self) -> list[str]:
        return list(dict.fromkeys(k for k in self.kinds if k != GOOD))

    def columns(self) -> list[str]:
        """Components then the totals that exist."""
        cols = [*self.components, TOTAL]
        return [*cols, TOTAL_REF] if self.weights_ref != self.weights else cols


def run_check(
    rows: Sequence[Row],
    task: str,
    fns: Mapping[str, ComponentFn],
    weights: Mapping[str, float],
    weights_source: str = "",
) -> RewardCheck:
    """Score the references and their bad variants; fill ``metrics`` (module docstring)."""
    if not rows:
        raise DataError(f"no usable {task} rows to check (see analyze_rewards --help)")
    row_of, kinds, texts = [], [], []
    for i, (row, bads) in enumerate(zip(rows, bad_variants(rows, task), strict=True)):
        for kind, text in {GOOD: row["reference"], **bads}.items():
            row_of.append(i)
            kinds.append(kind)
            texts.append(text)
    item_rows = [rows[i] for i in row_of]
    scores = score(texts, item_rows, fns)
    w = normalised(weights, reference_free=True)
    w_ref = normalised(weights, reference_free=False)
    scores[TOTAL] = weighted(scores, w)
    scores[TOTAL_REF] = weighted(scores, w_ref)
    check = RewardCheck(
        task=task,
        components=list(fns),
        weights=w,
        weights_ref=w_ref,
        weights_source=weights_source,
        row_of=np.array(row_of),
        kinds=kinds,
        texts=texts,
        scores=scores,
        rows=list(rows),
    )
    check.metrics = check_metrics(check)
    return check


def pair_accuracy(good: np.ndarray, bad: np.ndarray) -> float:
    """Fraction of pairs where good scores higher; a tie counts half."""
    if good.size == 0:
        return math.nan
    return float(np.mean((good > bad) + 0.5 * (good == bad)))


def check_metrics(check: RewardCheck) -> dict[str, Any]:
    """The flat metrics of a check (module docstring)."""
    g, b = check.pairs()
    m: dict[str, Any] = {
        "analyze/task": check.task,
        "analyze/rows": len(check.rows),
        "analyze/pairs": int(b.size),
    }
    for col in check.columns():
        s = check.scores[col]
        m[f"analyze/good/{col}"] = float(np.mean(s[g]))
        m[f"analyze/bad/{col}"] = float(np.mean(s[b]))
        m[f"analyze/gap/{col}"] = float(np.mean(s[g] - s[b]))
    m["analyze/pair_accuracy"] = pair_accuracy(check.scores[TOTAL][g], check.scores[TOTAL][b])
    for kind in check.bad_kinds():
        gk, bk = check.pairs(kind)
        m[f"analyze/pairs_by_kind/{kind}"] = int(bk.size)
        m[f"analyze/gap_by_kind/{kind}"] = float(
            np.mean(check.scores[TOTAL][gk] - check.scores[TOTAL][bk])
        )
    task_check = task_registry.get_task(check.task).reward_check
    if task_check is not None:
        m.update(task_check.metrics(check.rows))
    m["analyze/min_gap"] = MIN_GAP
    m["analyze/pass"] = int(m[f"analyze/gap/{TOTAL}"] > MIN_GAP)
    return m


# --------------------------------------------------------------------------------------------
# Model outputs (evaluate's samples)
# --------------------------------------------------------------------------------------------


@dataclass
class SamplesBreakdown:
    """Component scores of every reply set of a samples file: the baseline's, each policy's
    and the references."""

    scores: dict[str, dict[str, np.ndarray]]
    """who (e.g. sft, ppo, dpo, ref) -> column -> score per sample (NaN: not scored)."""
    columns: list[str]
    matched: int
    unmatched: int

    @property
    def who(self) -> tuple[str, ...]:
        """The reply sets in order: the baseline, the policies as evaluate ran them, ``ref``."""
        return tuple(self.scores)

    def means(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for who, cols in self.scores.items():
            out[who] = {}
            for col, v in cols.items():
                v = v[np.isfinite(v)]
                out[who][col] = float(v.mean()) if v.size else math.nan
        return out


def reply_sets(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """The reply sets of an evaluate sample: its ``baseline``, its ``policies`` (every one
    evaluate ran: ppo, dpo, ...), then ``ref``; ``(sft, ppo, ref)`` for a sample that does not
    name them."""
    policies = sample.get("policies")
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        policies = ["ppo"]
    baseline = sample.get("baseline")
    return (baseline if isinstance(baseline, str) else "sft", *policies, REFERENCE)


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """``reports/samples.jsonl`` rows (id, reference, ``<name>_reply`` of the baseline and of
    each policy); DataError naming the file and line on the first bad one."""
    from rlhf_lab.data.readers import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: samples file not found (run evaluate first)")
    out = []
    for rec in read_jsonl(path):
        if rec.error is not None:
            raise DataError(f"{rec.origin}: {rec.error}")
        value = rec.value or {}
        keys = ["id", *(f"{w}_reply" for w in reply_sets(value) if w != REFERENCE)]
        missing = [k for k in keys if not isinstance(value.get(k), str)]
        if missing:
            raise DataError(f"{rec.origin}: not an evaluate sample (no string {missing[0]!r})")
        out.append(value)
    if not out:
        raise DataError(f"{path}: no samples")
    return out


def score_samples(
    samples: Sequence[Mapping[str, Any]],
    rows: Sequence[Row],
    fns: Mapping[str, ComponentFn],
    check: RewardCheck,
    source: str = "samples",
) -> SamplesBreakdown:
    """Score each sample's replies (the baseline's and every policy's, :func:`reply_sets` of the
    first sample) and its reference with the check's components.

    Samples are joined to ``rows`` by id (the rows hold the task meta: code, movies). The
    references are not scored on reference-based components (they would match themselves).
    """
    by_id = {r.get("id"): r for r in rows}
    pairs = [(s, by_id[s["id"]]) for s in samples if s["id"] in by_id]
    if not pairs:
        raise DataError(
            f"{source}: no sample id matches a row of the input; pass the prompt rows the "
            "samples were made from (evaluate's data/grounded/test.jsonl)"
        )
    sub_rows = [r for _, r in pairs]
    out: dict[str, dict[str, np.ndarray]] = {}
    for who in reply_sets(samples[0]):
        if who == REFERENCE:
            texts = [r["reference"] or "" for r in sub_rows]
            names = {n: f for n, f in fns.items() if not is_reference_based(n)}
        else:
            texts = [s[f"{who}_reply"] for s, _ in pairs]
            names = dict(fns)
        scores = score(texts, sub_rows, names)
        cols = {n: scores.get(n, np.full(len(texts), np.nan)) for n in fns}
        cols[TOTAL] = weighted(scores, check.weights)
        if TOTAL_REF in check.columns():
            cols[TOTAL_REF] = (
                weighted(scores, check.weights_ref)
                if who != REFERENCE
                else np.full(len(texts), np.nan)
            )
        out[who] = cols
    return SamplesBreakdown(out, check.columns(), len(pairs), len(samples) - len(pairs))


def samples_metrics(b: SamplesBreakdown) -> dict[str, Any]:
    m: dict[str, Any] = {
        "analyze/samples/matched": b.matched,
        "analyze/samples/unmatched": b.unmatched,
    }
    for who, cols in b.means().items():
        for col, v in cols.items():
            if math.isfinite(v):
                m[f"analyze/samples/{who}/{col}"] = v
    return m
