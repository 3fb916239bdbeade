"""Each stage's metrics in two files: a small headline DVC shows, and the full set beside it.

``metrics/<stage>.json`` is the stage's declared DVC metric: the few numbers that answer "did
it work" (the keys :data:`HEADLINE` names), so ``dvc exp show`` / ``dvc metrics diff`` stay a
table a person reads. ``metrics/full/<stage>.json`` holds every number the stage computed
(headline included); ``dvc.yaml`` declares it an ``out`` with ``cache: false``, so git keeps
it with each experiment and ``rlhf-lab compare`` reads it, but DVC does not tabulate it.
``docs/metrics.md`` says what each key means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from rlhf_lab.io import write_json

FULL_DIR = Path("metrics/full")
"""Where the full metrics live, one ``<stage>.json`` per stage."""

HEADLINE: dict[str, tuple[str, ...]] = {
    # ``{m}`` stands for one key segment: a model (sft, ppo, dpo, ref) or a policy.
    "prepare_preference": ("data/train_pairs", "invalid/fraction"),
    "score_with_llm": ("judge/agreement",),
    "train_reward": ("valid/accuracy", "test/accuracy"),
    "train_sft": ("valid/loss", "valid/loss_base"),
    "train_critic": ("valid/pearson",),
    "train_ppo": ("objective/score", "objective/kl", "val/explained_variance"),
    "train_dpo": ("valid/rewards/accuracies",),
    "train_recommender": (
        "recommender/skipped",
        "recommender/recall@1",
        "recommender/recall@10",
        "recommender/recall@50",
        "baseline_popularity/recall@10",
        "baseline_cooccurrence/recall@10",
        "recommender_vs_{m}/wilcoxon_p",
        "grounding/test/candidate_hit",
    ),
    "evaluate": (
        "{m}/rm_score",
        "{m}/bertscore_f1",
        "{m}/tokens",
        "{m}/bleu4",
        "{m}/rec_hit_rate",  # crs
        "{m}/hallucinated_rate",  # crs
        "{m}/doctest/pass_rate",  # docstring
        "delta/{m}/win_rate_rm",
        "delta/{m}/win_rate_rm_lc",
        "delta/{m}/rm_pvalue_wilcoxon",
        "delta/{m}/kl",
        "verdict/{m}/decision",
    ),
}
"""Per stage, the keys of its headline file. A stage without an entry keeps every key there
(tests/test_headline.py checks that every stage in ``dvc.yaml`` with metrics has one)."""


@cache
def _pattern(stage: str) -> re.Pattern[str] | None:
    keys = HEADLINE.get(stage)
    if keys is None:
        return None
    alternatives = (re.escape(k).replace(re.escape("{m}"), "[^/]+") for k in keys)
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def headline(stage: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``metrics`` that ``stage``'s headline file keeps (all of them for a stage
    :data:`HEADLINE` does not name)."""
    pattern = _pattern(stage)
    if pattern is None:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if pattern.fullmatch(k)}


def full_path(metrics_path: str | Path) -> Path:
    """``metrics/full/<stage>.json`` for ``metrics/<stage>.json``."""
    path = Path(metrics_path)
    return path.parent / FULL_DIR.name / path.name


def write_metrics(metrics_path: str | Path, metrics: Mapping[str, Any]) -> None:
    """Write ``metrics`` whole to :func:`full_path` and the headline to ``metrics_path``
    (``metrics/<stage>.json``; the stage is the file's stem)."""
    path = Path(metrics_path)
    write_json(full_path(path), dict(metrics))
    write_json(path, headline(path.stem, metrics))


def read_metrics(metrics_path: str | Path) -> dict[str, Any]:
    """A stage's full metrics: :func:`full_path` when it exists, else the file itself."""
    path = Path(metrics_path)
    full = full_path(path)
    return json.loads((full if full.is_file() else path).read_text(encoding="utf-8"))
