"""Reward-model benchmark on real human preferences (Anthropic HH-RLHF, helpful subsets).

    python bench/reward_model.py                       # defaults below (~20 min on 2 CPU cores)
    python bench/reward_model.py --train-pairs 500 --eval-pairs 300   # a quick smoke run

Trains the reward model with the project's own loop (``rlhf_lab.training.reward_model``) on
``helpful-online`` + ``helpful-rejection-sampled`` and measures pairwise accuracy on all of
``helpful-base`` (the split in ``../shared/data/README.md``), next to the "longer reply wins"
baseline on the same pairs, training throughput (pairs/s) and peak memory. Prints a table and
writes ``bench/results/reward_model.json``.

Anchors (../shared/data/README.md): OpenAssistant deberta-v3-large RM 0.69-0.71 on HH helpful,
text-davinci-003 as a judge 0.63, longer-reply-wins 0.596 on helpful-base, chance 0.50.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from benchlib import RESULTS, ROOT, WORK, machine
from rlhf_lab import models, ui
from rlhf_lab.config import RewardTrainConfig
from rlhf_lab.io import write_json
from rlhf_lab.training.reward_model import pairs_from_rows, train_reward_model

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf"
TRAIN_SUBSETS = ("helpful-online", "helpful-rejection-sampled")
EVAL_SUBSET = "helpful-base"
ROLES = {"Human": "user", "Assistant": "assistant"}
_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_transcript(text: str) -> list[dict[str, str]]:
    """An HH transcript (``\\n\\nHuman: ...\\n\\nAssistant: ...``) as chat messages."""
    parts = _TURN.split(text)
    # parts = [preamble, role, content, role, content, ...]
    return [
        {"role": ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def hh_rows(subset: str) -> list[dict]:
    """Preference rows (``rlhf_lab.data.rows.PreferenceRow``) from one HH subset; the last turn
    is the reply."""
    rows = []
    with gzip.open(DATA / subset / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            raw = json.loads(line)
            chosen, rejected = parse_transcript(raw["chosen"]), parse_transcript(raw["rejected"])
            if (
                not chosen
                or chosen[-1]["role"] != "assistant"
                or rejected[-1]["role"] != "assistant"
            ):
                continue
            rows.append(
                {
                    "id": f"{subset}-{i}",
                    "prompt": chosen[:-1],
                    "chosen": chosen[-1]["content"],
                    "rejected": rejected[-1]["content"],
                    "label_source": "human",
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--encoder", default="embedded:all-minilm-l6-v2", help="model source")
    ap.add_argument("--train-pairs", type=int, default=0, help="0 = all (3886 after drops)")
    ap.add_argument("--eval-pairs", type=int, default=0, help="0 = all of helpful-base")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=6e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "reward_model.json")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data")

    # The encoder is materialised once, as prepare_models would, into an ignored work folder.
    work = WORK / re.sub(r"[^\w.-]", "_", args.encoder)
    if not (work / "config.json").is_file():
        models.materialise_encoder(args.encoder, work, None)

    train_raw = [row for subset in TRAIN_SUBSETS for row in hh_rows(subset)]
    train, dropped = pairs_from_rows(train_raw)  # drops chosen == rejected
    evals, eval_dropped = pairs_from_rows(hh_rows(EVAL_SUBSET))
    rng = random.Random(args.seed)
    if args.train_pairs:
        train = rng.sample(train, min(args.train_pairs, len(train)))
    if args.eval_pairs:
        evals = rng.sample(evals, min(args.eval_pairs, len(evals)))

    cfg = RewardTrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
    )
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    outcome = train_reward_model(work, train, {"helpful_base": evals}, cfg)
    total = time.perf_counter() - start
    m = outcome.metrics
    result = {
        "encoder": args.encoder,
        "encoder_parameters": models.parameter_count(models.load_sequence_classifier(work)),
        "train_subsets": "+".join(TRAIN_SUBSETS),
        "train_pairs": len(train),
        "train_dropped_identical": dropped,
        "eval_subset": EVAL_SUBSET,
        "eval_pairs": len(evals),
        "eval_dropped_identical": eval_dropped,
        **{f"config/{k}": v for k, v in cfg.model_dump().items()},
        "accuracy": m["helpful_base/accuracy"],
        "accuracy_chosen_shorter": m["helpful_base/accuracy_chosen_shorter"],
        "margin": m["helpful_base/margin"],
        "longer_wins_accuracy": m["helpful_base/longer_wins_accuracy"],
        "train_loss_last_epoch": m["train/loss"],
        "train_pairs_per_s": m["perf/train_pairs_per_s"],
        "train_seconds": m["perf/train_seconds"],
        "total_seconds": total,
        "peak_memory_mb": m["perf/peak_memory_mb"],
        **machine(load_before),
    }
    write_json(args.out, result)
    ui.summary(
        f"reward model on HH helpful ({args.encoder})",
        {
            "train pairs (online + rejection-sampled)": len(train),
            "eval pairs (helpful-base)": len(evals),
            "pairwise accuracy": result["accuracy"],
            "  on pairs where chosen is shorter": result["accuracy_chosen_shorter"],
            "longer reply wins (baseline)": result["longer_wins_accuracy"],
            "mean margin": result["margin"],
            "train pairs/s": result["train_pairs_per_s"],
            "train seconds": result["train_seconds"],
            "total seconds": total,
            "peak memory (MiB)": result["peak_memory_mb"],
        },
    )
    ui.console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
