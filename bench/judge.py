"""Benchmark: how far the local judge agrees with human preference labels, and how fast it is.

    python bench/judge.py                    # embedded SmolLM2-135M judge, 300 pairs
    python bench/judge.py --n 1000 --judge models/base/policy --pairwise

Reads the first ``--n`` usable pairs of HH-RLHF helpful-base (test split) from
``../shared/data``, scores both replies of every pair on the chat rubric with the local
backend (no cache: the throughput is the real one), and reports

- agreement: fraction of pairs whose human-chosen reply gets the higher ``overall`` judge
  score (a tie counts 1/2, so a judge that rates everything equally scores 0.5), also per
  rubric dimension, and with ``--pairwise`` the head-to-head judgement in both orders;
- the "longer reply wins" baseline on the same pairs (length in characters, ties 1/2);
- items/s: rubric questions (reply x dimension) answered per second by the backend, and
  items per CPU-second of this process (less sensitive to other jobs on the machine).

Prints a table and writes ``bench/results/judge.json``. A pair is usable when both
transcripts share the dialogue before the last assistant turn and the last replies differ.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, WORK, machine
from rlhf_lab import models
from rlhf_lab.judge import Judge
from rlhf_lab.judge.label import agreement
from rlhf_lab.judge.local import LocalJudge

DATA = ROOT.parent / "shared/data/hh-rlhf/helpful-base/test.jsonl.gz"
RESULTS = RESULTS_DIR / "judge.json"
EMBEDDED_JUDGE = "embedded:smollm2-135m-instruct"

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str) -> list[dict[str, str]]:
    """HH-RLHF ``\\n\\nHuman: …\\n\\nAssistant: …`` text as chat messages."""
    parts = _TURN.split(text)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def load_pairs(path: Path, n: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``n`` usable pairs as preference rows, and how many were skipped."""
    rows, skipped = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            rec = json.loads(line)
            chosen, rejected = parse_transcript(rec["chosen"]), parse_transcript(rec["rejected"])
            usable = (
                chosen
                and rejected
                and chosen[-1]["role"] == rejected[-1]["role"] == "assistant"
                and chosen[:-1] == rejected[:-1]
                and chosen[-1]["content"] != rejected[-1]["content"]
            )
            if not usable:
                skipped += 1
                continue
            rows.append(
                {
                    "id": f"helpful-base-test-{i}",
                    "prompt": chosen[:-1],
                    "chosen": chosen[-1]["content"],
                    "rejected": rejected[-1]["content"],
                    "label_source": "human",
                    "meta": {},
                }
            )
            if len(rows) == n:
                break
    return rows, skipped


def judge_dir(spec: str) -> Path:
    """A model directory for ``spec``; embedded names are materialised once under bench/.work."""
    if not spec.startswith("embedded:"):
        return Path(spec)
    out = WORK / spec.removeprefix("embedded:")
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        models.materialise_policy(spec, out, "float32", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="pairs to score")
    ap.add_argument("--judge", default=EMBEDDED_JUDGE, help="embedded name, model dir or hub id")
    ap.add_argument("--data", type=Path, default=DATA, help="HH-RLHF jsonl.gz")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--pairwise", action="store_true", help="also judge head to head")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    rows, skipped = load_pairs(args.data, args.n)
    # Items/s depends on what else the machine runs; CPU seconds per item does much less.
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    load_start = time.perf_counter()
    backend = LocalJudge(
        judge_dir(args.judge), batch_size=args.batch_size, max_length=args.max_length
    )
    load_s = time.perf_counter() - load_start
    judge = Judge(backend, "chat", progress=True)
    scored = judge.score(
        [*rows, *rows], [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    chosen, rejected = scored[: len(rows)], scored[len(rows) :]
    stats = judge.stats

    result: dict[str, Any] = {
        "bench": "judge",
        "data": f"../{args.data.relative_to(ROOT.parent)}"
        if args.data.is_relative_to(ROOT.parent)
        else str(args.data),
        "pairs": len(rows),
        "pairs_skipped": skipped,
        "judge": args.judge,
        "rubric_sha": judge.rubric_sha,
        "backend": "local",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "agreement": agreement(
            [(c["overall"], r["overall"]) for c, r in zip(chosen, rejected, strict=True)]
        )[0],
    }
    for dim in judge.dims:
        result[f"agreement/{dim}"] = agreement(
            [(c[dim], r[dim]) for c, r in zip(chosen, rejected, strict=True)]
        )[0]
    result["length_baseline"] = agreement([(len(r["chosen"]), len(r["rejected"])) for r in rows])[0]
    result["items"] = stats.items
    result["failures"] = sum(stats.failures.values())
    result["items_per_s"] = stats.items_per_s
    result["scoring_s"] = stats.seconds
    result["load_s"] = load_s
    result["items_per_cpu_s"] = stats.items / (time.process_time() - cpu_before)
    result["rating_mass"] = stats.rating_mass
    result["mean/chosen"] = sum(c["overall"] for c in chosen) / len(chosen)
    result["mean/rejected"] = sum(r["overall"] for r in rejected) / len(rejected)
    if args.pairwise:
        before = stats.seconds
        prefs = judge.compare(rows, [r["chosen"] for r in rows], [r["rejected"] for r in rows])
        result["agreement/pairwise"] = agreement([(p.value, 0.5) for p in prefs])[0]
        result["pairwise_pairs_per_s"] = len(rows) / (stats.seconds - before)
    result["machine"] = {**machine(load_before), "device": backend.device}

    table = Table(title=f"judge: {args.judge} on {len(rows)} HH-RLHF helpful-base pairs")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key in {"machine", "bench"}:
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
