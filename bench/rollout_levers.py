"""What each rollout lever saves: the same PPO rollout with the lever off and on, in one process.

    python bench/rollout_levers.py              # the embedded SmolLM2-135M (materialised once)
    python bench/rollout_levers.py --policy models/base/policy --repeats 3
    python bench/rollout_levers.py --tiny       # 2-layer random model, seconds; never the real file

The levers (``ppo.*``, all off by default; ``tests/test_ppo_rollout_reuse.py`` checks each gives
the plain rollout's tokens and, to float32 rounding, its numbers):

- ``logprobs_from_sampling``: the policy's log-probs and entropies recorded by the sampling pass,
  no policy pass afterwards — measured on ``gae`` with a separate critic (the default layout:
  policy, critic and reference passes, of which the first goes);
- ``share_prompt_cache``: ``rloo`` with ``--group`` replies per prompt, each prompt prefilled
  once;
- ``sort_by_length``: the policy/critic/reference chunks (``ppo.minibatch_size`` rows) hold rows
  of similar prompt length (``gae``; generation is unchanged, so its ratio is of the passes).

Each arm runs :func:`rlhf_lab.ppo.rollout.collect_rollout` on the same chitchat prompts with the
same seed (a length-only scorer: scoring is not what is measured), off and on interleaved
(A B A B ...) after one warm-up pair; a figure is the median of ``--repeats``. Every pair
also records whether the replies were the same and the largest difference of the per-token
log-probs, entropies, reference log-probs and values (``max_abs_diff``). ``passes_s`` is
the rollout minus sampling and scoring. Threads: ``--threads`` (default 1, as the tests). On a
shared machine the load average at start and end is recorded: read ratios, not seconds.
Prints a table and writes ``bench/results/rollout_levers.json`` (``--tiny``:
``bench/.work/rollout_levers/tiny.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, load_span, machine, shown_path
from benchlib import WORK as WORK_ROOT

RESULTS = RESULTS_DIR / "rollout_levers.json"
WORK = WORK_ROOT / "rollout_levers"
TINY_RESULTS = WORK / "tiny.json"
EMBEDDED = "embedded:smollm2-135m-instruct"

ARMS = {
    "logprobs_from_sampling": {"advantage": "gae"},
    "share_prompt_cache": {"advantage": "rloo"},
    "sort_by_length": {"advantage": "gae"},
}


def policy_dir(arg: str | None, tiny: bool) -> Path:
    """The policy to measure: ``--policy``, a tiny random one, or the embedded default
    materialised under bench/.work (float32)."""
    from rlhf_lab import models
    from rlhf_lab.testing import build_tiny_policy

    if arg:
        return Path(arg)
    out = WORK / ("tiny-policy" if tiny else "policy")
    if not (out / "config.json").is_file():
        if tiny:
            build_tiny_policy(out)
        else:
            models.materialise_policy(EMBEDDED, out, "float32", None)
    return out


def prompts(n: int) -> list[dict[str, Any]]:
    """``n`` prompt rows from the embedded chitchat conversations (every 7th example, so the
    prompts range from one turn to ``data.max_turns``)."""
    from rlhf_lab.config import DataConfig
    from rlhf_lab.data.readers import read_chitchat
    from rlhf_lab.data.sources import parse_chitchat

    max_turns = DataConfig().max_turns
    rows: list[dict[str, Any]] = []
    for k, rec in enumerate(read_chitchat()):
        if rec.value is None:
            continue
        for ex in parse_chitchat(rec.value, rec.origin, max_turns=max_turns)[k % 3 :: 7]:
            rows.append({"id": ex.id, "prompt": ex.prompt, "reference": ex.reference, "meta": {}})
        if len(rows) >= n:
            return rows[:n]
    return rows


def critic_dir(policy: Path) -> Path:
    """A fresh critic (LoRA at init + a seeded value head) saved beside the policy: the
    separate-critic layout's passes cost the same whatever the critic learned."""
    from rlhf_lab.config import LoraConfig
    from rlhf_lab.ppo.model import new_critic, save_critic

    out = policy.parent / f"{policy.name}-critic"
    if not (out / "critic.json").is_file():
        torch.manual_seed(0)
        save_critic(new_critic(policy, LoraConfig()), out, score_mean=0.0, score_std=1.0)
    return out


def one_arm(
    lever: str, policy: Path, rows: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    from rlhf_lab.config import LoraConfig, PpoConfig
    from rlhf_lab.ppo.composite_score import Scores
    from rlhf_lab.ppo.distributed import DataParallel
    from rlhf_lab.ppo.model import chat_prompt_ids, load_policy_critic
    from rlhf_lab.ppo.rollout import collect_rollout

    base = ARMS[lever]
    group = args.group if lever == "share_prompt_cache" else 1
    prompts_per_batch = max(1, args.batch // group)
    cfgs = {
        on: PpoConfig(
            **base,
            num_generations=group,
            batch_size=prompts_per_batch,
            minibatches=args.minibatches,
            max_new_tokens=args.new_tokens,
            temperature=0.7,
            **{lever: on},
        )
        for on in (False, True)
    }
    cfg = cfgs[False]
    torch.manual_seed(0)
    model = load_policy_critic(
        policy, critic_dir(policy) if cfg.estimator.critic else None, LoraConfig(), 0.7
    )
    ids = [chat_prompt_ids(model.tok, r["prompt"], None, cfg.max_prompt_length) for r in rows]

    def scorer(replies, batch, step):
        total = torch.tensor([len(r) / 100 for r in replies])
        return Scores(total, {"len": total}, {"len": 1.0})

    dp = DataParallel()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    same = True
    max_diff: dict[str, float] = {}
    for rep in range(args.repeats + 1):  # the first pair warms up and is not counted
        outs = {}
        for on in (False, True):
            torch.manual_seed(1234)
            ro, timing = collect_rollout(model, scorer, cfgs[on], dp, rows, ids, step=rep)
            outs[on] = ro
            if rep:
                t = dict(timing)
                t["time/passes_s"] = t["time/rollout_s"] - t["time/generate_s"] - t["time/score_s"]
                runs[on].append(t)
        a, b = outs[False], outs[True]
        same &= a.replies == b.replies and a.logprobs.shape == b.logprobs.shape
        if same:
            for name in ("logprobs", "entropy", "ref_logprobs", "values"):
                diff = float((getattr(a, name) - getattr(b, name)).abs().max())
                max_diff[name] = max(max_diff.get(name, 0.0), diff)
    med = {
        on: {
            k.removeprefix("time/"): statistics.median(r[k] for r in runs[on]) for k in runs[on][0]
        }
        for on in (False, True)
    }
    ratio = {k: med[False][k] / med[True][k] for k in ("rollout_s", "generate_s", "passes_s")}
    return {
        "ppo": {
            "advantage": cfg.advantage,
            "num_generations": group,
            "batch_size": prompts_per_batch,
            "minibatch_size": cfg.minibatch_size,
            "max_new_tokens": cfg.max_new_tokens,
        },
        "off": med[False],
        "on": med[True],
        "speedup_off_over_on": ratio,
        "same_replies": same,
        "max_abs_diff": max_diff,
        "all_off_s": [r["time/rollout_s"] for r in runs[False]],
        "all_on_s": [r["time/rollout_s"] for r in runs[True]],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", help="policy directory (default: the embedded 135M policy)")
    ap.add_argument("--tiny", action="store_true", help="2-layer random policy (smoke run)")
    ap.add_argument("--levers", default=",".join(ARMS), help="comma-separated subset")
    ap.add_argument("--batch", type=int, default=8, help="replies per rollout")
    ap.add_argument("--group", type=int, default=4, help="replies per prompt (prompt cache)")
    ap.add_argument("--minibatches", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="results file (default: see the docstring)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    policy = policy_dir(args.policy, args.tiny)
    rows = prompts(args.batch)
    result: dict[str, Any] = {
        "command": "python bench/rollout_levers.py"
        + (f" --policy {shown_path(args.policy)}" if args.policy else "")
        + (" --tiny" if args.tiny else ""),
        "date": started,
        "policy": shown_path(policy) if args.policy or args.tiny else EMBEDDED,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "policy")},
        "levers": {},
    }
    for lever in args.levers.split(","):
        result["levers"][lever] = one_arm(lever, policy, rows, args)
    result["machine"] = machine(load_start)
    result["load_average_1min_start_end"] = load_span(load_start)

    print(f"{'lever':<24} {'rollout off/on':>15} {'passes off/on':>14} {'generate off/on':>16}")
    for lever, r in result["levers"].items():
        s = r["speedup_off_over_on"]
        print(
            f"{lever:<24} {s['rollout_s']:>15.3f} {s['passes_s']:>14.3f} {s['generate_s']:>16.3f}"
        )
    print(f"CPU {result['machine']['cpu']}; load {result['load_average_1min_start_end']}")
    out = args.out or (TINY_RESULTS if args.tiny else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return result


if __name__ == "__main__":
    main()
