"""train_recommender: fit the crs recommender and measure it against two baselines.

    rlhf-lab train_recommender --params params.yaml

Reads ``task``, ``data.catalogue`` and ``recommender``, and ``data/prompts/{train,test}.jsonl``
(prepare_preference). For crs: fits :class:`rlhf_lab.tasks.crs.recommender.Recommender` on the
train prompts, writes ``models/recommender/`` (the model and its ``provenance.json``) and
``metrics/train_recommender.json``: CRSLab's Recall@1/10/50, NDCG@10 ... on the test prompts'
recommender turns that suggest a movie, for ``recommender/``, ``baseline_popularity/`` and
``baseline_cooccurrence/``, with paired tests of ours against each
(:mod:`rlhf_lab.evaluation.recommender`), and ``models/recommender/candidate_prompts.jsonl``:
the test prompts grounded in the model's top ``recommender.candidates`` movies
(:func:`rlhf_lab.tasks.crs.grounding.with_candidates`). Other tasks have no recommender: the
stage writes a ``skipped`` marker and metric in a moment, and reads no data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, read_jsonl, stage_outputs, write_json, write_jsonl
from rlhf_lab.models import PROVENANCE
from rlhf_lab.tasks.crs import ranking, recommender

PROMPTS_DIR = Path("data/prompts")
MODEL_DIR = Path("models/recommender")
METRICS = Path("metrics/train_recommender.json")
CANDIDATE_PROMPTS = "candidate_prompts.jsonl"
"""The test prompts grounded in the top ``recommender.candidates`` (inside MODEL_DIR)."""


def main(params: Params, **_: Any) -> None:
    provenance = {
        "stage": "train_recommender",
        "params": section_dict(params, "task", "recommender"),
        "data.catalogue": params.data.catalogue,
    }
    if not recommender.applies(params.task.name):
        why = f"task is {params.task.name}"
        with stage_outputs(MODEL_DIR, full_path(METRICS), METRICS):
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
    train_path, test_path = PROMPTS_DIR / "train.jsonl", PROMPTS_DIR / "test.jsonl"
    train = recommender.turns_from_rows(read_jsonl(train_path), str(train_path))
    test_rows = read_jsonl(test_path, missing_ok=True)
    test = recommender.turns_from_rows(test_rows, str(test_path))
    model, systems, seconds = recommender.fit_with_baselines(train, catalogue_ids, cfg)
    metrics, _ = compare(systems, test, seed=cfg.seed)
    metrics |= {f"recommender/weight_{k}": v for k, v in model.weights.items()}
    metrics |= {
        "recommender/items": float(len(model.items)),
        "recommender/train_turns": float(len(recommender.recommendation_turns(train))),
        "recommender/train_seconds": round(seconds, 3),
    }
    # The held-out prompts grounded in the candidates (ECR's retrieval-augmented prompt).
    # Twice k ids per row, since an id no catalogue names is dropped from the note.
    grounded = [
        grounding.with_candidates(
            row, recommender.candidates(model, row, 2 * cfg.candidates), catalogue, cfg.candidates
        )
        for row in test_rows
    ]
    with stage_outputs(MODEL_DIR, full_path(METRICS), METRICS):
        with atomic_dir(MODEL_DIR) as tmp:
            model.save(tmp)
            write_jsonl(tmp / CANDIDATE_PROMPTS, grounded)
            write_json(tmp / PROVENANCE, provenance)
        write_metrics(METRICS, metrics)
    ui.summary(
        "train_recommender",
        {key: metrics[key] for key in metrics if key.split("/")[1] in ranking.HEADLINE},
    )
