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

from arms import preset_main, preset_plan
from benchlib import RESULTS as RESULTS_DIR

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


def main() -> None:
    preset_main(
        "docstring.py",
        __doc__,
        PRESET,
        ARMS,
        RESULTS,
        lambda compared: {"proceed": proceed_counts(compared), "expected": EXPECTED},
    )


if __name__ == "__main__":
    main()
