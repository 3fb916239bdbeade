"""train_recommender: fit the crs recommender, measure it, and write the prompts the policy sees.

    rlhf-lab train_recommender --params params.yaml

Reads ``task``, ``data.catalogue`` and ``recommender``, and
``data/prompts/{train,valid,test}.jsonl`` (prepare_preference). Writes
``data/grounded/{train,valid,test}.jsonl``: the prompt rows that train_sft, train_ppo and
evaluate read, and the prompts score_with_llm and train_dpo put the preference pairs on.

For crs: fits :class:`rlhf_lab.tasks.crs.recommender.Recommender` on the train prompts, writes
``models/recommender/`` (the model and its ``provenance.json``) and
``metrics/train_recommender.json``: CRSLab's Recall@1/10/50, NDCG@10 ... on the test prompts'
recommender turns that suggest a movie, for ``recommender/``, ``baseline_popularity/`` and
``baseline_cooccurrence/``, with paired tests of ours against each
(:mod:`rlhf_lab.evaluation.recommender`). Every prompt is grounded in its top
``recommender.candidates`` movies (:func:`rlhf_lab.tasks.crs.grounding.with_candidates`):
valid and test by the model, train by signals fitted without the prompt's own dialogue
(:meth:`~rlhf_lab.tasks.crs.recommender.Recommender.cross_fitted_top_k`), so SFT and PPO learn
from candidates as noisy as the test prompts'; ``grounding/<split>/candidate_hit`` is the
fraction of a split's recommender turns whose candidates hold a gold movie.

Other tasks have no recommender: the stage writes a ``skipped`` marker and metric and copies
``data/prompts`` to ``data/grounded`` unchanged, in a moment.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, read_jsonl, stage_outputs, write_json, write_jsonl
from rlhf_lab.models import PROVENANCE
from rlhf_lab.tasks.crs import ranking, recommender
from rlhf_lab.tasks.registry import get_task

PROMPTS_DIR = Path("data/prompts")
GROUNDED_DIR = Path("data/grounded")
MODEL_DIR = Path("models/recommender")
METRICS = Path("metrics/train_recommender.json")
SPLITS = ("train", "valid", "test")


def main(params: Params, **_: Any) -> None:
    provenance = {
        "stage": "train_recommender",
        "params": section_dict(params, "task", "recommender"),
        "data.catalogue": params.data.catalogue,
    }
    if not get_task(params.task.name).has_recommender:
        why = f"task is {params.task.name}"
        with stage_outputs(GROUNDED_DIR, MODEL_DIR, full_path(METRICS), METRICS):
            with atomic_dir(GROUNDED_DIR) as tmp:
                for split in SPLITS:
                    if (PROMPTS_DIR / f"{split}.jsonl").is_file():
                        shutil.copyfile(PROMPTS_DIR / f"{split}.jsonl", tmp / f"{split}.jsonl")
            with atomic_dir(MODEL_DIR) as tmp:
                write_json(tmp / PROVENANCE, provenance | {"skipped": why})
            write_metrics(METRICS, {"recommender/skipped": 1, "recommender/skipped_reason": why})
        ui.summary("train_recommender", {"skipped": why})
        return
    from rlhf_lab.evaluation.recommender import compare
    from rlhf_lab.tasks.crs import grounding, load_catalogue

    cfg = params.recommender
    catalogue = load_catalogue(params.data.catalogue)
    catalogue_ids = list(catalogue.ids()) if catalogue is not None else []
    rows = {
        split: read_jsonl(PROMPTS_DIR / f"{split}.jsonl", missing_ok=split != "train")
        for split in SPLITS
    }
    turns = {
        split: recommender.turns_from_rows(rows[split], str(PROMPTS_DIR / f"{split}.jsonl"))
        for split in SPLITS
    }
    model, systems, seconds = recommender.fit_with_baselines(turns["train"], catalogue_ids, cfg)
    metrics, _ = compare(systems, turns["test"], seed=cfg.seed)
    metrics |= {f"recommender/weight_{k}": v for k, v in model.weights.items()}
    metrics |= {
        "recommender/items": float(len(model.items)),
        "recommender/train_turns": float(len(recommender.recommendation_turns(turns["train"]))),
        "recommender/train_seconds": round(seconds, 3),
    }
    # Twice k ids per row, since an id no catalogue names is dropped from the note.
    ids = {
        split: model.cross_fitted_top_k(turns[split], 2 * cfg.candidates)
        if split == "train"
        else [recommender.top_k(model, t, 2 * cfg.candidates) for t in turns[split]]
        for split in SPLITS
    }
    grounded = {
        split: [
            grounding.with_candidates(row, c, catalogue, cfg.candidates)
            for row, c in zip(rows[split], ids[split], strict=True)
        ]
        for split in SPLITS
    }
    for split in SPLITS:
        kept = [r["meta"]["candidates"] for r in grounded[split]]
        metrics[f"grounding/{split}/candidate_hit"] = recommender.candidate_hit_rate(
            turns[split], kept
        )
    with stage_outputs(GROUNDED_DIR, MODEL_DIR, full_path(METRICS), METRICS):
        with atomic_dir(GROUNDED_DIR) as tmp:
            for split in SPLITS:
                if (PROMPTS_DIR / f"{split}.jsonl").is_file():
                    write_jsonl(tmp / f"{split}.jsonl", grounded[split])
        with atomic_dir(MODEL_DIR) as tmp:
            model.save(tmp)
            write_json(tmp / PROVENANCE, provenance)
        write_metrics(METRICS, metrics)
    ui.summary(
        "train_recommender",
        {key: metrics[key] for key in metrics if key.split("/")[1] in ranking.HEADLINE}
        | {k: v for k, v in metrics.items() if k.startswith("grounding/")},
    )
