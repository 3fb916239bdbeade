"""prepare_preference: normalise a data source into prompt rows and preference pairs.

    rlhf-lab prepare_preference --params params.yaml

Reads ``task`` and ``data`` (and ``models/base/policy`` when pairs need sampled replies);
writes ``data/prompts/{train,valid,test}.jsonl``, ``data/preference/{train,valid,test}.jsonl``,
``data/invalid/<source split>.jsonl`` (every dropped row with its reason, file and line) and
``metrics/prepare_preference.json``. Formats, validation and pairing: ``rlhf_lab.data``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlhf_lab import models, ui
from rlhf_lab.config import Params
from rlhf_lab.data import pairs, prepare
from rlhf_lab.errors import DataError, ModelSourceError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, failed_output, stage_outputs, write_jsonl
from rlhf_lab.tasks.registry import FORMAT_PARSERS
from rlhf_lab.tokens import default_device

POLICY_DIR = Path("models/base/policy")
PROMPTS_DIR = Path("data/prompts")
PREFERENCE_DIR = Path("data/preference")
INVALID_DIR = Path("data/invalid")
METRICS = Path("metrics/prepare_preference.json")
FAILED_INVALID_DIR = failed_output("prepare_preference", INVALID_DIR)


def _write_dir(target: Path, files: dict[str, list[dict[str, Any]]]) -> None:
    # The whole directory is replaced at once: no half-written file, no stale file left over
    # from a run on another source.
    with atomic_dir(target) as tmp:
        for name, rows in files.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)


def main(params: Params, **_: Any) -> None:
    cfg, task = params.data, params.task
    source = prepare.open_source(cfg, task)
    mode = pairs.resolve_pairs(cfg.pairs, source.format)
    loaded = prepare.load_examples(source, cfg, FORMAT_PARSERS)
    try:
        prepare.check_invalid_fraction(loaded, cfg, str(FAILED_INVALID_DIR))
    except DataError:
        # A failed run changes none of its outputs (data/invalid/ keeps the record of the last
        # good run, consistent with data/preference/); its dropped rows go where the error
        # message points, outside the pipeline.
        _write_dir(
            FAILED_INVALID_DIR, prepare.invalid_rows(loaded.dropped_rows(), loaded.split_labels)
        )
        raise

    samples, seconds = None, 0.0
    if pairs.needs_samples(mode):
        if not POLICY_DIR.is_dir():
            raise ModelSourceError(
                f"data.pairs {mode!r} samples replies from {POLICY_DIR}, which is missing; "
                "run `rlhf-lab prepare_models` (or `dvc repro`) first"
            )
        tok = models.load_tokenizer(POLICY_DIR)
        dtype = models.read_provenance(POLICY_DIR).get("dtype", "float32")
        model = models.load_causal_lm(POLICY_DIR, dtype).to(default_device())
        start = time.perf_counter()
        samples = pairs.sample_for(
            model,
            tok,
            loaded.examples,
            n=cfg.num_candidates if mode == "judge" else 1,
            max_new_tokens=cfg.sample_max_new_tokens,
            temperature=cfg.sample_temperature,
            batch_size=cfg.sample_batch_size,
            seed=cfg.seed,
            system_prompt=task.system_prompt,
        )
        seconds = time.perf_counter() - start

    prepared = prepare.build(loaded, mode, cfg, samples)
    with stage_outputs(PROMPTS_DIR, PREFERENCE_DIR, INVALID_DIR, full_path(METRICS), METRICS):
        _write_dir(PROMPTS_DIR, prepared.prompts)
        _write_dir(PREFERENCE_DIR, prepared.preference)
        _write_dir(INVALID_DIR, prepared.invalid)
        write_metrics(METRICS, prepared.metrics)

    ui.summary("prepare_preference", prepare.summary_rows(prepared.metrics, seconds))
