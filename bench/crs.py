"""The crs (ECR) benchmark over seeds: SFT vs PPO (gae) vs GRPO vs DPO on ReDial.

    python bench/crs.py --dry-run               # print the experiments it would run
    python bench/crs.py                         # 3 seeds: 6 RL + 3 DPO trainings (not timed)
    python bench/crs.py --steps 6 --seeds 0     # a shorter profile
    python bench/crs.py --set eval.judge=true   # ECR's rubrics by the judge too (slow on CPU)
    python bench/crs.py --compare-only          # aggregate what has run (after a stop)

Run it in a workspace where ``dvc repro`` has finished. Every (arm, seed) is one DVC experiment
(``dvc exp run`` in the workspace, one after another) with the crs preset's ``-S`` values
(``rlhf-lab params --preset crs``:
ReDial in ``../shared/data/redial`` with its movie catalogue; every prompt grounded in the
recommender's candidates by train_recommender) and the arm's; the plan is ``bench/arms.py``'s
(the same replies per step for every online arm; DPO evaluated once per seed, with the first
arm). SFT is the baseline of every experiment and one model: no SFT param follows the seed, so
each RL arm's difference from it is paired within its experiment.

``rlhf-lab compare`` aggregates arms x seeds, and this script writes ``bench/results/crs.json``
(``--out`` elsewhere): per arm and metric (:data:`METRICS`: BLEU-1, distinct-1/2, empathy by the
VADER lexicon and by the judge where ``eval.judge`` ran, gold-hit / any-movie /
hallucinated-title rates, KL to SFT) the mean and 95% Student-t interval across seeds; each RL
arm minus SFT per seed (95% t-interval, paired t-test p) and, for a per-reply metric, per
prompt (95% paired-bootstrap CI, Wilcoxon p); the recommender's Recall@1/10/50 beside the
popularity and co-occurrence baselines (train_recommender, the same in every experiment); and
the seed's ECR reference numbers (:data:`REFERENCE`) beside ours, with the CPU and the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arms import first_metrics, markdown_table, preset_main, summarise_arms
from benchlib import RESULTS as RESULTS_DIR
from rlhf_lab.headline import full_path
from rlhf_lab.stages.train_recommender import METRICS as RECOMMENDER_METRICS

RESULTS = RESULTS_DIR / "crs.json"
ARMS = ("gae", "grpo")
"""The online arms (DPO is the offline one every seed evaluates with the first of them)."""
PRESET = "crs"

METRICS: tuple[tuple[str, str, str | None], ...] = (
    # (name in crs.json, rlhf-lab compare's column, per-reply score in samples.jsonl or None)
    ("bleu1", "bleu1", None),
    ("distinct1", "distinct1", None),
    ("distinct2", "distinct2", None),
    ("empathy_lexicon", "empathy", "crs/empathy"),
    ("empathy_judge", "judge_emotional_intensity", "judge/emotional_intensity"),
    ("rec_hit_rate", "rec_hit_rate", "flag/rec_hit"),
    ("any_movie_rate", "rec_rate", "flag/rec"),
    ("hallucinated_rate", "hallucinated_rate", "flag/hallucinated"),
    ("kl", "kl", None),
)
"""What ``crs.json`` reports per arm. Corpus metrics (BLEU-1, distinct-n) have no per-prompt
value, so their difference from SFT is paired by seed only."""

RECOMMENDER = ("recommender", "baseline_popularity", "baseline_cooccurrence")
RECALLS = ("recall@1", "recall@10", "recall@50")

REFERENCE = {
    "bleu1": {
        "baseline": 14.25,
        "rl_expected": [16.0, 18.0],
        "unit": "percent; ours is sacrebleu's corpus BLEU-1 (0-100) against the human reply",
    },
    "distinct1": {
        "baseline": 1.64,
        "rl_expected": [2.0, 2.5],
        "unit": "the seed's Dist-1 scale; ours is distinct / all unigrams of the replies, in "
        "[0, 1]: not the same unit, so set side by side only",
    },
    "empathy": {
        "rl_expected": [3.5, 4.0],
        "unit": "judge rating of 5; ours: empathy_judge where eval.judge ran (ECR's emotional "
        "intensity rubric); empathy_lexicon is VADER's |compound| in [0, 1], not on that scale",
    },
    "recall@1": {
        "baseline": 0.0234,
        "rl_expected": [0.030, 0.035],
        "unit": "fraction; ours is the recommender (train_recommender), which RL does not train",
    },
}
"""The seed's numbers: its ECR baseline and the gains it expects from RL, beside ours."""


def summarise(compared: Mapping[str, Any], recommender: Mapping[str, Any]) -> dict[str, Any]:
    """``crs.json``'s figures: :func:`arms.summarise_arms` of :data:`METRICS`, and
    ``recommender``: ``<system>/recall@k`` for each system that has it."""
    return {
        **summarise_arms(compared, METRICS),
        "recommender": {
            f"{system}/{k}": recommender[f"{system}/{k}"]
            for system in RECOMMENDER
            for k in RECALLS
            if f"{system}/{k}" in recommender
        },
    }


def recommender_metrics(compared: Mapping[str, Any]) -> dict[str, Any]:
    """train_recommender's full metrics (:func:`arms.first_metrics`): the recommender does not
    change between the plan's experiments."""
    return first_metrics(compared, str(full_path(RECOMMENDER_METRICS)))


LABELS = {
    "bleu1": "BLEU-1 (%)",
    "distinct1": "distinct-1",
    "distinct2": "distinct-2",
    "empathy_lexicon": "empathy, VADER |compound|",
    "empathy_judge": "empathy, judge (1-5)",
    "rec_hit_rate": "gold-hit rate",
    "any_movie_rate": "any-movie rate",
    "hallucinated_rate": "hallucinated-title rate",
    "kl": "KL to SFT (nats/reply)",
}
REFERENCE_CELL = {
    "bleu1": "14.25 -> 16-18",
    "distinct1": "1.64 -> 2.0-2.5 (other scale)",
    "empathy_judge": "-> 3.5-4.0",
}
"""The seed's ECR numbers (baseline -> expected from RL) beside each row where it has one."""


def markdown(result: Mapping[str, Any]) -> str:
    """``crs.json`` as :func:`arms.markdown_table` with the seed's ECR numbers beside it, then
    the recommender's recalls."""
    lines = [markdown_table(result, LABELS, REFERENCE_CELL, "ECR reference")]
    rec = result.get("recommender") or {}
    for system in RECOMMENDER:
        values = [rec.get(f"{system}/{k}") for k in RECALLS]
        if all(v is not None for v in values):
            lines.append(f"\n{system} R@1/10/50: " + " / ".join(f"{v:.3f}" for v in values))
    return "\n".join(lines)


def main() -> None:
    preset_main(
        "crs.py",
        __doc__,
        PRESET,
        ARMS,
        RESULTS,
        lambda compared: {
            **summarise(compared, recommender_metrics(compared)),
            "reference": REFERENCE,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
