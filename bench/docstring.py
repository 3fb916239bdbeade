"""The docstring Phase-1 protocol over seeds: SFT vs PPO (gae) vs GRPO vs DPO, with verdicts.

    python bench/docstring.py --dry-run               # print the experiments it would run
    python bench/docstring.py                         # 3 seeds (hours on 2 cores)
    python bench/docstring.py --steps 6 --seeds 0     # a shorter profile
    python bench/docstring.py --compare-only          # aggregate what has run (after a stop)

Every (arm, seed) is one DVC experiment (``dvc exp run`` in the workspace, one after another)
with the docstring preset's
``-S`` values (``rlhf-lab params --preset docstring``: the Barone & Sennrich functions in
``../shared/data/docstring``) and the arm's; the plan is ``bench/arms.py``'s (the same replies
per step for every online arm; DPO evaluated once per seed, with the first arm). evaluate
decides each policy by the docstring protocol (``eval.gates.protocol``: rule reward +0.10,
BLEU-4 +0.02, KL per token < 0.02). ``rlhf-lab compare`` aggregates arms x seeds (mean and
95% t-interval of the rule reward, BLEU-4, ROUGE-L, METEOR, doctest pass rate, KL per token,
and each seed's verdict), and this script writes ``bench/results/docstring.json`` (``--out``
elsewhere) with the protocol's expectations beside the figures, the CPU and the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arms import first_metrics, markdown_table, preset_main, preset_plan, summarise_arms
from benchlib import RESULTS as RESULTS_DIR
from rlhf_lab.evaluation.arms import METRICS_FILE
from rlhf_lab.headline import full_path

RESULTS = RESULTS_DIR / "docstring.json"
ARMS = ("gae", "grpo")
"""The online arms (DPO is the offline one every seed evaluates with the first of them)."""
PRESET = "docstring"
EXPECTED = {
    "reward": {"sft": 0.55, "rl": [0.65, 0.70]},
    "bleu4": {"sft": 0.185, "rl": [0.20, 0.22]},
    "rougeL": {"sft": 0.335, "rl": [0.35, 0.37]},
    "meteor": {"sft": 0.45, "rl": [0.47, 0.49], "note": "theirs with WordNet synonyms"},
    "kl_per_token": {"rl": "< 0.02"},
}
"""The Phase-1 protocol's expectations (its own model and data), shown beside ours."""


METRICS: tuple[tuple[str, str, str | None], ...] = (
    # (name in docstring.json, rlhf-lab compare's column, per-reply score in samples.jsonl)
    ("reward", "reward", "total_with_reference"),
    ("rm_score", "rm_score", "reward_model"),
    ("bleu4", "bleu4", None),
    ("rougeL", "rougeL", None),
    ("meteor", "meteor", None),
    ("doctest_examples", "doctest_examples", None),
    ("doctest_pass", "doctest_pass", None),
    ("kl_per_token", "kl_per_token", None),
)
"""What ``docstring.json`` reports per arm (:func:`arms.summarise_arms`)."""
LABELS = {
    "reward": "rule reward (trained on)",
    "rm_score": "reward-model score",
    "bleu4": "BLEU-4 (0-100)",
    "rougeL": "ROUGE-L",
    "meteor": "METEOR (no synonyms)",
    "doctest_examples": "replies with an example (of functions that carry one)",
    "doctest_pass": "doctest pass rate",
    "kl_per_token": "KL per token to SFT",
}
REFERENCE_CELL = {
    "reward": "0.55 -> 0.65-0.70",
    "bleu4": "18.5 -> 20-22",
    "rougeL": "0.335 -> 0.35-0.37",
    "meteor": "0.45 -> 0.47-0.49 (with WordNet)",
    "kl_per_token": "< 0.02",
}
"""The protocol's expectations (:data:`EXPECTED`) beside each row that has one."""
COMPONENT = "docstring/"
"""The prefix of the rule components' per-reply scores."""


def plan(seeds: list[int], batch_size: int, extra: dict[str, str]) -> list[tuple[str, dict]]:
    """``bench/arms.py``'s plan for :data:`ARMS`, every experiment on the docstring preset."""
    return preset_plan(PRESET, ARMS, seeds, batch_size, extra)


def proceed_counts(compared: dict) -> dict[str, str]:
    """Per arm, ``"<proceeds>/<seeds>"``: the goal is 2/3 for the best arm."""
    out = {}
    for arm in compared["arms"]:
        verdicts = [v for v in arm.get("verdicts", []) if v is not None]
        if verdicts:
            out[arm["arm"]] = f"{verdicts.count('proceed')}/{len(verdicts)}"
    return out


def components(compared: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Per rule component: the baseline's mean (``baseline``: its evaluate metrics) and each RL
    arm's difference from it per test function, averaged over seeds (``mean_diff``, paired
    bootstrap ``ci_lo``/``ci_hi``, ``wilcoxon_p``): the protocol's before/after table."""
    out: dict[str, Any] = {}
    for vs in compared.get("vs_baseline") or []:
        for key, diff in vs["prompts"].items():
            if key.startswith(COMPONENT):
                row = out.setdefault(
                    key, {"baseline": baseline.get(f"{vs['baseline']}/reward/{key}")}
                )
                row[vs["arm"]] = {
                    k: diff[k] for k in ("mean_diff", "ci_lo", "ci_hi", "wilcoxon_p") if k in diff
                }
    return out


def summarise(compared: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """``docstring.json``'s figures: :data:`METRICS` per arm, the rule components, each arm's
    verdicts and the protocol's expectations."""
    return {
        **summarise_arms(compared, METRICS),
        "components": components(compared, baseline),
        "verdicts": {
            a["arm"]: a["verdicts"]
            for a in compared["arms"]
            if any(v is not None for v in a.get("verdicts") or [])
        },
        "proceed": proceed_counts(compared),
        "expected": EXPECTED,
    }


def markdown(result: Mapping[str, Any]) -> str:
    """``docstring.json`` as markdown: :func:`arms.markdown_table` with the protocol's
    expectations, each arm's verdicts by seed, and the components' before/after table."""
    lines = [markdown_table(result, LABELS, REFERENCE_CELL, "protocol's expectation")]
    for arm, verdicts in result["verdicts"].items():
        lines.append(f"\n{arm} verdicts by seed: " + ", ".join(str(v) for v in verdicts))
    arms = [a for a in result["arms"] if a != result["baseline"]]
    head = ["component", f"{result['baseline']} mean", *(f"{a} Δ (p)" for a in arms)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in result["components"].items():
        base = row.get("baseline")
        cells = [f"{base:.3f}" if base is not None else ""]
        for arm in arms:
            d = row.get(arm)
            p = (d or {}).get("wilcoxon_p")
            cells.append(
                "" if not d else f"{d['mean_diff']:+.3f}" + ("" if p is None else f" ({p:.2g})")
            )
        lines.append(f"| {key.removeprefix(COMPONENT)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    preset_main(
        "docstring.py",
        __doc__,
        PRESET,
        ARMS,
        RESULTS,
        lambda compared: summarise(compared, first_metrics(compared, str(full_path(METRICS_FILE)))),
        markdown,
    )


if __name__ == "__main__":
    main()
