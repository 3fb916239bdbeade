"""Preference pairs from examples: human labels, reference vs sample (SPIN), or judge candidates.

``data.pairs``:

* ``human`` — HH-RLHF's own labels: chosen/rejected as the annotators picked them;
* ``reference_vs_sample`` — chosen = the human reference reply, rejected = a reply sampled from
  the base policy for the same prompt (SPIN, Chen et al. 2024, "Self-Play Fine-Tuning Converts
  Weak Language Models to Strong Language Models"). No judge needed: the human reply is taken
  to be better than the base model's;
* ``judge`` — ``data.num_candidates`` sampled replies per prompt, left unlabelled
  (``chosen``/``rejected`` null, ``candidates`` set) for ``score_with_llm`` to label;
* ``auto`` — ``human`` for the human-labelled formats (hh, preference), ``judge`` for
  ``prompt_only`` (no reference to prefer), ``reference_vs_sample`` for every other format.

A sampled reply that is empty or equal to the reference cannot make a pair; such prompts are
dropped from the preference rows (not from the prompt rows) and reported like invalid rows.

Sampled replies cut at ``data.sample_max_new_tokens`` (``data.unfinished_samples``): a pair of
a finished human reply and a base reply that stops mid-sentence teaches the reward model
"unfinished loses", a cue that is mostly reply length; PPO then buys reward by writing short
replies. ``trim`` (the default) cuts such a reply back to its last sentence end, so both sides
of a pair read as finished, and drops it when it has none; ``drop`` drops every cut reply;
``keep`` uses them as sampled.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from rlhf_lab.data.rows import Example, PreferenceRow, preference_row
from rlhf_lab.data.validate import (
    CHOSEN_EQUALS_REJECTED,
    EMPTY_TEXT,
    UNFINISHED_SAMPLE,
    Rejected,
    RowError,
    check_pair,
)
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import Sample

PAIR_MODES = ("human", "reference_vs_sample", "judge")
HUMAN_FORMATS = ("hh", "preference")
"""Formats whose rows are labelled pairs (chosen/rejected picked by people)."""
NO_REFERENCE_FORMATS = ("prompt_only",)
"""Formats whose rows hold no reference reply: only the judge can make their pairs."""

# A run of terminators, then closing quotes or brackets, then whitespace or the end: "3.5" does
# not end a sentence, "Sure!", "Why??" and 'he said "no."' do. Abbreviations ("Mr. ") count as
# ends too; they are rare in chat replies.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str | None:
    """``text`` up to and including its last sentence end; None when it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else None


def finish_sample(sample: Sample, policy: str) -> Sample | None:
    """``sample`` under ``data.unfinished_samples``; None when it cannot be used.

    A trimmed reply keeps ``eos=False`` and its generated token count (what was sampled);
    callers tell it apart by its text being shorter.
    """
    if sample.eos or policy == "keep":
        return sample
    if policy == "trim":
        text = trim_to_sentence(sample.text)
        if text:
            return dataclasses.replace(sample, text=text, token_ids=[])
    return None


def _unfinished_error(sample: Sample, policy: str) -> RowError:
    why = "data.unfinished_samples is 'drop'" if policy == "drop" else "no sentence end"
    return RowError(
        UNFINISHED_SAMPLE,
        "rejected",
        f"cut at {sample.n_tokens} tokens ({why}): {sample.text[:60]!r}",
    )


def resolve_pairs(pairs: str, fmt: str) -> str:
    """``data.pairs`` with 'auto' resolved; 'human' needs a human-labelled format."""
    if pairs == "auto":
        if fmt in HUMAN_FORMATS:
            return "human"
        return "judge" if fmt in NO_REFERENCE_FORMATS else "reference_vs_sample"
    if pairs == "reference_vs_sample" and fmt in NO_REFERENCE_FORMATS:
        raise ConfigError(
            f"params.yaml: data.pairs 'reference_vs_sample' needs reference replies, but "
            f"data.format {fmt!r} has none; use 'judge'"
        )
    if pairs == "human" and fmt not in HUMAN_FORMATS:
        raise ConfigError(
            "params.yaml: data.pairs 'human' needs human-labelled pairs (data.format hh or "
            f"preference), but the source is {fmt!r}; use 'reference_vs_sample' or 'judge'"
        )
    return pairs


def needs_samples(mode: str) -> bool:
    """Whether ``mode`` samples replies from the base policy."""
    return mode in ("reference_vs_sample", "judge")


def human_pairs(examples: list[Example]) -> list[PreferenceRow]:
    """Preference rows straight from the source's labels (hh, preference)."""
    return [
        preference_row(ex, ex.chosen, ex.rejected, "human", {"pairs": "human"}) for ex in examples
    ]


def reference_vs_sample(
    examples: list[Example], samples: list[Sample], max_chars: int, unfinished: str = "keep"
) -> tuple[list[PreferenceRow], list[Rejected]]:
    """SPIN rows: chosen = reference, rejected = the sample; unusable samples are dropped.

    ``unfinished``: ``data.unfinished_samples`` (see the module docstring).
    """
    if len(samples) != len(examples):
        raise ValueError(f"{len(samples)} samples for {len(examples)} examples")
    rows, dropped = [], []
    for ex, raw_sample in zip(examples, samples, strict=True):
        assert ex.reference is not None  # every loader sets a reference
        sample = finish_sample(raw_sample, unfinished)
        try:
            if sample is None:
                raise _unfinished_error(raw_sample, unfinished)
            check_pair(ex.reference, sample.text, max_chars)
        except RowError as err:
            err = RowError(err.reason, err.field, f"sampled reply: {err.detail}")
            raw = {**ex.to_json(), "rejected": raw_sample.text}
            dropped.append(Rejected.from_error(err, ex.origin, id=ex.id, raw=raw))
            continue
        meta = {"pairs": "reference_vs_sample", "rejected_tokens": sample.n_tokens}
        meta["rejected_eos"] = sample.eos
        meta["rejected_trimmed"] = sample.text != raw_sample.text
        # The label is human in the sense that matters downstream: chosen is human-written.
        rows.append(preference_row(ex, ex.reference, sample.text, "human", meta))
    return rows, dropped


def judge_candidates(
    examples: list[Example], samples: list[list[Sample]], unfinished: str = "keep"
) -> tuple[list[PreferenceRow], list[Rejected]]:
    """Unlabelled rows with the distinct non-empty candidates; fewer than 2 -> dropped.

    ``unfinished``: ``data.unfinished_samples``, applied to each candidate.
    """
    if len(samples) != len(examples):
        raise ValueError(f"{len(samples)} candidate lists for {len(examples)} examples")
    rows, dropped = [], []
    for ex, raw_cands in zip(examples, samples, strict=True):
        finished = [finish_sample(s, unfinished) for s in raw_cands]
        cands = [s for s in finished if s is not None]
        texts: list[str] = []
        tokens: list[int] = []
        eos: list[bool] = []
        for s in cands:
            if s.text and s.text not in texts:
                texts.append(s.text)
                tokens.append(s.n_tokens)
                eos.append(s.eos)
        if len(texts) < 2:
            if len(cands) < 2:
                reason = UNFINISHED_SAMPLE
            else:
                reason = EMPTY_TEXT if not texts else CHOSEN_EQUALS_REJECTED
            err = RowError(
                reason,
                "candidates",
                f"{len(texts)} distinct non-empty of {len(raw_cands)} sampled "
                f"({len(raw_cands) - len(cands)} cut at the token limit and unusable)",
            )
            raw = {**ex.to_json(), "candidates": [s.text for s in raw_cands]}
            dropped.append(Rejected.from_error(err, ex.origin, id=ex.id, raw=raw))
            continue
        meta = {"pairs": "judge", "candidate_tokens": tokens, "candidate_eos": eos}
        rows.append(preference_row(ex, None, None, "judge", meta, candidates=texts))
    return rows, dropped


def sample_for(
    model: Any,
    tok: Any,
    examples: list[Example],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    system_prompt: str | None,
) -> list[list[Sample]]:
    """``n`` sampled replies per example (copies of a prompt sit in the same batch)."""
    from rlhf_lab.generation import generate

    prompts = [ex.prompt for ex in examples for _ in range(n)]
    flat = generate(
        model,
        tok,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
        system_prompt=system_prompt,
        desc=f"sampling {len(prompts)} replies",
    )
    return [flat[i * n : (i + 1) * n] for i in range(len(examples))]
