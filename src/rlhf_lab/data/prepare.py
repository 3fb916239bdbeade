"""The prepare_preference pipeline as library code: the stage only loads models and writes files.

    source = open_source(data, task)              # format resolved, records streamed
    mode = pairs.resolve_pairs(data.pairs, source.format)
    loaded = load_examples(source, data, FORMAT_PARSERS)   # parsed, validated, deduped, sampled
    check_invalid_fraction(loaded, data, "data/invalid")   # one-line DataError above the limit
    samples = pairs.sample_for(model, tok, loaded.examples, ...)   # unless mode == "human"
    prepared = build(loaded, mode, data, samples) # splits, pairs, invalid rows, metrics

Order matters: validation and deduplication see every source row (so the invalid counts and
the first-wins duplicate rule do not depend on ``data.max_examples``); the subsample is taken
from the valid rows; splits and pairs come last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from rlhf_lab.config import DataConfig, TaskConfig
from rlhf_lab.data import pairs as pairs_lib
from rlhf_lab.data.readers import Record, peek, read_source
from rlhf_lab.data.rows import Example, PreferenceRow, PromptRow
from rlhf_lab.data.sources import ParserFactory, make_parser, resolve_format
from rlhf_lab.data.splits import SPLITS, Subsample, split_rows
from rlhf_lab.data.validate import (
    NO_PREFERENCE,
    REASONS,
    Deduper,
    Rejected,
    RowError,
    check_encodable,
    check_pair,
    check_prompt,
    check_text,
    text_key,
)
from rlhf_lab.errors import DataError, clip
from rlhf_lab.generation import Sample


@dataclass
class Source:
    """An opened source: its resolved format and its records (a stream, read once)."""

    format: str
    records: Iterator[Record]


@dataclass
class Loaded:
    """The valid examples kept from a source, and everything dropped on the way."""

    format: str
    examples: list[Example]
    """Valid, deduplicated, subsampled to data.max_examples; in source order."""
    rejected: list[Rejected]
    """Dropped rows, in source order."""
    split_labels: list[str]
    """Source split names seen (local file names, hub split): one data/invalid file each."""
    rows_read: int = 0
    """Records read: lines, dataset rows or conversations."""
    rows_seen: int = 0
    """Examples the records produced plus records dropped whole: the invalid fraction's base."""
    rows_valid: int = 0
    """Valid examples before the data.max_examples subsample."""
    skipped: list[Rejected] = field(default_factory=list)
    """Rows that hold no pair by their own label (no_preference): recorded, not invalid."""

    def dropped_rows(self) -> list[Rejected]:
        """Rejected and skipped rows together, in source order (what data/invalid holds)."""
        if not self.skipped:
            return self.rejected
        return sorted(self.rejected + self.skipped, key=lambda r: (r.origin.source, r.origin.line))

    @property
    def invalid_fraction(self) -> float:
        return len(self.rejected) / self.rows_seen if self.rows_seen else 0.0


@dataclass
class Prepared:
    """What the stage writes."""

    prompts: dict[str, list[PromptRow]]
    preference: dict[str, list[PreferenceRow]]
    invalid: dict[str, list[dict[str, Any]]]
    """Dropped rows per source split label (data/invalid/<label>.jsonl)."""
    metrics: dict[str, Any] = field(default_factory=dict)


def open_source(cfg: DataConfig, task: TaskConfig) -> Source:
    """Start reading ``data.source`` and resolve ``data.format`` (peeking at the first row)."""
    first, records = peek(read_source(cfg))
    return Source(resolve_format(cfg, task, first), records)


def validate_example(ex: Example, max_chars: int) -> None:
    """Every check on a parsed example (RowError on the first problem).

    Covers all the example writes, ``id`` and ``meta`` included, so nothing it holds can fail
    later, after minutes of sampling, when the stage writes its outputs.
    """
    check_prompt(ex.prompt, max_chars)
    if ex.chosen is not None or ex.rejected is not None:
        check_pair(ex.chosen or "", ex.rejected or "", max_chars)
    elif ex.reference is not None:  # None only for prompt-only rows (no reply to check)
        check_text(ex.reference, "reference", max_chars)
    check_encodable(ex.id, "id")
    check_encodable(ex.meta, "meta")


def load_examples(
    source: Source, cfg: DataConfig, task_parsers: Mapping[str, ParserFactory] | None = None
) -> Loaded:
    """Parse, validate and deduplicate every record; keep a deterministic subsample.

    ``task_parsers`` (``rlhf_lab.tasks.registry.FORMAT_PARSERS``) parse the tasks' formats.
    """
    parse = make_parser(source.format, cfg, task_parsers)
    dedupe = Deduper()
    keep: Subsample[Example] = Subsample(cfg.max_examples, cfg.seed)
    loaded = Loaded(source.format, [], [], [])
    for rec in source.records:
        loaded.rows_read += 1
        if rec.origin.split not in loaded.split_labels:
            loaded.split_labels.append(rec.origin.split)
        if rec.error is not None:
            loaded.rows_seen += 1
            loaded.rejected.append(Rejected.from_error(rec.error, rec.origin, raw=rec.raw))
            continue
        assert rec.value is not None
        try:
            examples = parse(rec.value, rec.origin)
        except RowError as err:
            loaded.rows_seen += 1
            dropped = Rejected.from_error(err, rec.origin, raw=rec.value)
            (loaded.skipped if err.reason == NO_PREFERENCE else loaded.rejected).append(dropped)
            continue
        for ex in examples:
            loaded.rows_seen += 1
            try:
                validate_example(ex, cfg.max_chars)
                dedupe.check(ex.id, text_key(ex.prompt, ex.reference, ex.chosen, ex.rejected))
            except RowError as err:
                loaded.rejected.append(
                    Rejected.from_error(err, ex.origin, id=ex.id, raw=ex.to_json())
                )
                continue
            loaded.rows_valid += 1
            keep.add(ex.id, ex)
    loaded.examples = keep.items()
    return loaded


def check_invalid_fraction(loaded: Loaded, cfg: DataConfig, invalid_dir: str) -> None:
    """One-line DataError when there is nothing usable or too much is invalid."""
    if loaded.rows_seen == 0:
        raise DataError(
            f"data.source {clip(cfg.source)}: no usable rows ({loaded.rows_read} records read, "
            f"none of them held a {loaded.format} example)"
        )
    frac = loaded.invalid_fraction
    if not loaded.examples and not loaded.rejected:
        raise DataError(
            f"data.source {clip(cfg.source)}: no pairs: all {len(loaded.skipped)} rows prefer "
            "neither reply (tie, both_bad)"
        )
    if frac > cfg.max_invalid_fraction or not loaded.examples:
        first = loaded.rejected[0]
        raise DataError(
            f"{first.describe()} — {len(loaded.rejected)} of {loaded.rows_seen} rows "
            f"({frac:.1%}) are invalid, above data.max_invalid_fraction "
            f"{cfg.max_invalid_fraction}; every dropped row is in {invalid_dir}/"
        )


def invalid_rows(rejected: list[Rejected], labels: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Dropped rows per source split label; every label gets a file, empty or not."""
    out: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for r in rejected:
        out.setdefault(r.origin.split, []).append(r.to_json())
    return out


def build(
    loaded: Loaded,
    mode: str,
    cfg: DataConfig,
    samples: list[list[Sample]] | None = None,
) -> Prepared:
    """Split the examples, make the preference rows for ``mode`` and compute the metrics.

    ``samples``: per example, the replies sampled from the base policy (1 for
    reference_vs_sample, data.num_candidates for judge); None for human pairs.
    """
    examples = loaded.examples
    if pairs_lib.needs_samples(mode) and samples is None:
        raise ValueError(f"data.pairs {mode!r} needs sampled replies")
    dropped: list[Rejected] = []
    if mode == "human":
        pref = pairs_lib.human_pairs(examples)
    elif mode == "reference_vs_sample":
        assert samples is not None
        pref, dropped = pairs_lib.reference_vs_sample(
            examples, [s[0] for s in samples], cfg.max_chars, cfg.unfinished_samples
        )
    else:
        assert samples is not None
        pref, dropped = pairs_lib.judge_candidates(examples, samples, cfg.unfinished_samples)

    group = {ex.id: ex.group for ex in examples}
    split_args = (cfg.seed, cfg.valid_fraction, cfg.test_fraction)
    prompts = split_rows(
        [ex.to_prompt_row() for ex in examples], lambda r: group[r["id"]], *split_args
    )
    preference = split_rows(pref, lambda r: group[r["id"]], *split_args)
    invalid = invalid_rows(loaded.dropped_rows() + dropped, loaded.split_labels)
    metrics = _metrics(loaded, mode, cfg, prompts, preference, dropped, samples)
    return Prepared(prompts, preference, invalid, metrics)


def _metrics(
    loaded: Loaded,
    mode: str,
    cfg: DataConfig,
    prompts: dict[str, list[PromptRow]],
    preference: dict[str, list[PreferenceRow]],
    dropped: list[Rejected],
    samples: list[list[Sample]] | None,
) -> dict[str, Any]:
    counts = Counter(r.reason for r in loaded.rejected)
    m: dict[str, Any] = {
        "data/source": cfg.source,
        "data/format": loaded.format,
        "data/pairs": mode,
        "data/label_source": "judge" if mode == "judge" else "human",
        "data/rows_read": loaded.rows_read,
        "data/rows_seen": loaded.rows_seen,
        "data/rows_valid": loaded.rows_valid,
        "data/rows_kept": len(loaded.examples),
    }
    for split in SPLITS:
        m[f"data/{split}_prompts"] = len(prompts[split])
        m[f"data/{split}_pairs"] = len(preference[split])
    # Every reason is listed, zeros included, so `dvc metrics diff` always has the same keys.
    for reason in REASONS:
        m[f"invalid/{reason}"] = counts.get(reason, 0)
    m["invalid/total"] = len(loaded.rejected)
    m["data/no_preference"] = len(loaded.skipped)
    m["invalid/fraction"] = loaded.invalid_fraction
    if pairs_lib.needs_samples(mode):
        drop_counts = Counter(r.reason for r in dropped)
        for reason in sorted(drop_counts):
            m[f"pairs/dropped_{reason}"] = drop_counts[reason]
        m["pairs/dropped"] = len(dropped)
    all_pref = [r for split in SPLITS for r in preference[split]]
    labelled = [r for r in all_pref if r["chosen"] is not None]
    if labelled:
        # "Longer reply wins" is the baseline a reward model must beat; show the raw gap.
        m["pairs/chosen_mean_chars"] = fmean(len(r["chosen"]) for r in labelled)
        m["pairs/rejected_mean_chars"] = fmean(len(r["rejected"]) for r in labelled)
        m["pairs/chosen_longer_fraction"] = fmean(
            len(r["chosen"]) > len(r["rejected"]) for r in labelled
        )
    if samples:
        flat = [s for per in samples for s in per]
        m["sample/count"] = len(flat)
        m["sample/mean_tokens"] = fmean(s.n_tokens for s in flat)
        m["sample/eos_fraction"] = fmean(s.eos for s in flat)
        m["sample/empty_fraction"] = fmean(not s.text for s in flat)
        m["sample/unfinished_policy"] = cfg.unfinished_samples
        if mode == "reference_vs_sample":
            m["sample/trimmed_fraction"] = (
                fmean(bool(r["meta"].get("rejected_trimmed")) for r in all_pref)
                if all_pref
                else 0.0
            )
    return m


def summary_rows(m: dict[str, Any], sample_seconds: float = 0.0) -> dict[str, str]:
    """The stage's end-of-run table, from its metrics."""
    rows = {
        "source": f"{m['data/source']} ({m['data/format']})",
        "pairs": f"{m['data/pairs']} (label_source {m['data/label_source']})",
        "rows read / valid / kept": (
            f"{m['data/rows_read']} / {m['data/rows_valid']} / {m['data/rows_kept']}"
        ),
        "invalid": f"{m['invalid/total']} ({m['invalid/fraction']:.2%})",
    }
    for reason in REASONS:
        if m[f"invalid/{reason}"]:
            rows[f"  {reason}"] = str(m[f"invalid/{reason}"])
    if m.get("data/no_preference"):
        rows["skipped: no preference (tie, both bad)"] = str(m["data/no_preference"])
    for split in SPLITS:
        rows[f"{split} prompts / pairs"] = (
            f"{m[f'data/{split}_prompts']} / {m[f'data/{split}_pairs']}"
        )
    if "pairs/dropped" in m:
        rows["pairs dropped (bad sample)"] = str(m["pairs/dropped"])
    if "sample/trimmed_fraction" in m:
        rows["rejected trimmed to a sentence end"] = f"{m['sample/trimmed_fraction']:.0%}"
    if "sample/count" in m:
        rows["sampled replies"] = f"{m['sample/count']} in {sample_seconds:.0f} s"
        rows["sample mean tokens / eos"] = (
            f"{m['sample/mean_tokens']:.1f} / {m['sample/eos_fraction']:.0%}"
        )
    return rows
