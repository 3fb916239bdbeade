"""The docstring Phase-1 protocol over seeds: SFT vs PPO (gae) vs GRPO vs DPO, with verdicts.

    python bench/docstring.py --dry-run               # print the experiments it would run
    python bench/docstring.py                         # 3 seeds (hours on 2 cores)
    python bench/docstring.py --steps 6 --seeds 0     # a shorter profile
    python bench/docstring.py --compare-only          # aggregate what has run (after a stop)

Every (arm, seed) is one DVC experiment (``dvc exp run --temp``) with the docstring preset's
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

import json
import sys

from arms import compare_plan, plan_parser, plan_sets, preset_plan, print_plan, run_plan
from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, WORK, machine
from rlhf_lab import presets
from rlhf_lab.config import load_params

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
    args = plan_parser(__doc__, RESULTS).parse_args()
    params = presets.preset_params(PRESET, load_params(ROOT / "params.yaml"))
    runs = plan(args.seeds, params.ppo.batch_size, plan_sets(args))
    if args.dry_run:
        print_plan(runs)
        return

    seconds, finished = run_plan(runs, WORK / "docstring_seconds.json", args.compare_only)
    compared = compare_plan(runs, finished, args.out)
    result = {
        "command": "python bench/docstring.py "
        + " ".join(a for a in sys.argv[1:] if a != "--compare-only"),
        **machine(),
        "preset": PRESET,
        "replies_per_step": params.ppo.batch_size,
        "steps": args.steps or params.ppo.steps,
        "experiments": {name: sets for name, sets in runs if name in finished},
        "missing": [name for name, _ in runs if name not in finished],
        "experiment_seconds": {n: s for n, s in seconds.items() if n in finished},
        "proceed": proceed_counts(compared),
        "expected": EXPECTED,
        "compare": compared,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
