"""crs recommender benchmark on ReDial, by the CRSLab protocol.

    python bench/crs_recommender.py          # the shared subset: ~1 min on 2 CPU cores
    python bench/crs_recommender.py --train community-datasets/re_dial --train-split train \
        --test community-datasets/re_dial --test-split test --out bench/.work/re_dial_full.json

Fits :class:`rlhf_lab.tasks.crs.recommender.Recommender` on the ReDial train dialogues and
ranks the catalogue for every recommender turn of the test dialogues that suggests a movie,
beside the popularity and co-occurrence baselines on the same turns, with paired tests of ours
against each (per-turn hit@10) (:mod:`rlhf_lab.evaluation.recommender`). The rows come through
the project's own data path (``data.source`` -> ReDial parser -> prompt rows), so a local
file, a directory or the hub id ``community-datasets/re_dial`` work the same way.

How much the 500-dialogue subset limits it: the same fit on the first 125 and 250 training
dialogues (``curve/...``). Anchors: the seed's ECR baseline R@1 0.0234; GPT-4 zero-shot on
ReDial (He et al. 2023, CIKM, "Large Language Models as Zero-Shot Conversational
Recommenders") R@1 0.045, R@10 0.19.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from benchlib import RESULTS, ROOT, machine, shown_path
from rlhf_lab import ui
from rlhf_lab.config import DataConfig, RecommenderConfig, TaskConfig
from rlhf_lab.data import prepare
from rlhf_lab.evaluation.recommender import compare
from rlhf_lab.io import write_json
from rlhf_lab.tasks.crs import grounding, load_catalogue, ranking
from rlhf_lab.tasks.crs import recommender as rec
from rlhf_lab.tasks.registry import FORMAT_PARSERS

DATA = ROOT.parent / "shared" / "data" / "redial"
ANCHORS = {
    "seed_ecr_baseline/recall@1": 0.0234,
    "gpt4_zero_shot/recall@1": 0.045,
    "gpt4_zero_shot/recall@10": 0.19,
}
CURVE = (125, 250)
"""Training dialogues of the subset curve (the full training set is the last point)."""


def load_rows(source: str, split: str, catalogue: str | None) -> list[dict]:
    """Every recommender turn's prompt row of ``source``, through prepare_preference's own
    reading path."""
    cfg = DataConfig(source=source, split=split, catalogue=catalogue, max_examples=0)
    loaded = prepare.load_examples(
        prepare.open_source(cfg, TaskConfig(name="crs")), cfg, FORMAT_PARSERS
    )
    return [ex.to_prompt_row() for ex in loaded.examples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(DATA / "train_data.jsonl.gz"))
    ap.add_argument("--train-split", default="train", help="hub split when --train is a hub id")
    ap.add_argument("--test", default=str(DATA / "test_data.jsonl.gz"))
    ap.add_argument("--test-split", default="test", help="hub split when --test is a hub id")
    ap.add_argument("--catalogue", default=str(DATA / "movies_with_mentions.csv"))
    ap.add_argument("--out", type=Path, default=RESULTS / "crs_recommender.json")
    ap.add_argument("--no-curve", action="store_true", help="skip the subset curve")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    train = rec.turns_from_rows(load_rows(args.train, args.train_split, args.catalogue))
    test_rows = load_rows(args.test, args.test_split, args.catalogue)
    test = rec.turns_from_rows(test_rows)
    catalogue = load_catalogue(args.catalogue)
    ids = catalogue.ids() if catalogue is not None else []
    cfg = RecommenderConfig()
    model, systems, train_seconds = rec.fit_with_baselines(train, ids, cfg)
    start = time.perf_counter()
    metrics, _ = compare(systems, test, seed=cfg.seed)
    eval_seconds = time.perf_counter() - start
    no_demotion, _ = compare(
        {
            "recommender_no_demotion": rec.Recommender(
                train, ids, cfg.model_copy(update={"demote": False})
            )
        },
        test,
    )
    # The grounded prompt's candidates: how often they hold a gold movie (the reply's best
    # case), and how often the hallucination check flags a human reference (its false alarms).
    # On the training turns: ranked by the model that counted them (in sample) and
    # cross-fitted, as train_recommender grounds the training prompts.
    k = cfg.candidates
    grounded = {
        f"candidates/turns_with_gold_in_top_{k}": rec.candidate_hit_rate(
            test, [rec.top_k(model, t, k) for t in test]
        ),
        f"candidates/train_in_sample_gold_in_top_{k}": rec.candidate_hit_rate(
            train, [rec.top_k(model, t, k) for t in train]
        ),
        f"candidates/train_cross_fitted_gold_in_top_{k}": rec.candidate_hit_rate(
            train, model.cross_fitted_top_k(train, k)
        ),
        "no_hallucination/human_references_flagged": sum(
            bool(grounding.hallucinated_titles(r["reference"] or "", r, catalogue))
            for r in test_rows
        )
        / max(len(test_rows), 1),
    }
    curve: dict[str, float] = {}
    if not args.no_curve:
        groups = list(dict.fromkeys(t.group for t in train))
        for n in CURVE:
            keep = set(groups[:n])
            part = [t for t in train if t.group in keep]
            out, _ = compare({"m": rec.Recommender(part, ids, cfg)}, test)
            curve |= {f"curve/{n}/recall@{k}": out[f"m/recall@{k}"] for k in (1, 10, 50)}
        curve |= {
            f"curve/{len(groups)}/recall@{k}": metrics[f"recommender/recall@{k}"]
            for k in (1, 10, 50)
        }

    def shown(source: str, split: str) -> str:
        return shown_path(source) if Path(source).exists() else f"{source} [{split}]"

    result = {
        "command": " ".join(["python bench/crs_recommender.py", *sys.argv[1:]]),
        "date": started,
        "train": shown(args.train, args.train_split),
        "test": shown(args.test, args.test_split),
        "catalogue": shown_path(args.catalogue),
        "train_dialogues": len({t.group for t in train}),
        "train_rec_turns": len(rec.recommendation_turns(train)),
        "test_dialogues": len({t.group for t in test}),
        "test_rec_turns": len(rec.recommendation_turns(test)),
        "items": len(model.items),
        **{f"config/{k}": v for k, v in cfg.model_dump().items()},
        **metrics,
        **{k: v for k, v in no_demotion.items() if k.split("/")[1] in ranking.HEADLINE},
        **{f"recommender/weight_{k}": v for k, v in model.weights.items()},
        **grounded,
        **curve,
        **{f"anchor/{k}": v for k, v in ANCHORS.items()},
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        **machine(load_before),
    }
    write_json(args.out, result)
    table = {}
    for name in [*systems, "recommender_no_demotion"]:
        table[name] = "  ".join(
            f"{m} {result[f'{name}/{m}']:.4f}" for m in ranking.HEADLINE if f"{name}/{m}" in result
        )
    for other in list(systems)[1:]:
        p = f"recommender_vs_{other}"
        table[f"{p} hit@10"] = (
            f"diff {result[f'{p}/diff']:+.4f} [{result[f'{p}/ci_low']:+.4f}, "
            f"{result[f'{p}/ci_high']:+.4f}]  wilcoxon p {result[f'{p}/wilcoxon_p']:.2g}  "
            f"bootstrap p {result[f'{p}/bootstrap_p']:.2g}"
        )
    for n in [*CURVE, result["train_dialogues"]] if curve else []:
        table[f"trained on {n} dialogues"] = "  ".join(
            f"recall@{k} {curve[f'curve/{n}/recall@{k}']:.4f}" for k in (1, 10, 50)
        )
    table |= {name: f"{v:.4f}" for name, v in grounded.items()}
    table |= {name: f"{v:.4f}" for name, v in ANCHORS.items()}
    table["cases (turn, gold movie)"] = f"{int(result['recommender/cases'])}"
    table["train seconds"] = f"{train_seconds:.1f}"
    ui.summary(f"crs recommender on ReDial ({result['cpu']})", table)
    ui.console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
