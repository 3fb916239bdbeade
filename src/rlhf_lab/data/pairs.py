"""Preference pairs from examples: human labels, reference vs sample (SPIN), or judge candidates.

``data.pairs``:

* ``human`` — HH-RLHF's own labels: chosen/rejected as the annotators picked them;
* ``reference_vs_sample`` — chosen = the human reference reply, rejected = a reply sampled from
  the base policy for the same prompt (SPIN, Chen et al. 2024, "Self-Play Fine-Tuning Converts
  Weak Language Models to Strong Language Models"). No judge needed: the human reply is taken
  to be better than the base model's;
* ``judge`` — ``data.num_candidates`` sampled replies per prompt, left unlabelled
  (``chosen``/``rejected`` null, ``candidates`` set) for ``score_with_llm`` to label;
* ``auto`` — ``human`` for hh, ``reference_vs_sample`` for every other format.

A sampled reply that is empty or equal to the reference cannot make a pair; such prompts are
dropped from the preference rows (not from the prompt rows) and reported like invalid rows.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.data.rows import Example, preference_row
from rlhf_lab.data.validate import (
    CHOSEN_EQUALS_REJECTED,
    EMPTY_TEXT,
    Rejected,
    RowError,
    check_pair,
)
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import Sample

PAIR_MODES = ("human", "reference_vs_sample", "judge")


def resolve_pairs(pairs: str, fmt: str) -> str:
    """``data.pairs`` with 'auto' resolved; 'human' needs a format with human labels (hh)."""
    if pairs == "auto":
        return "human" if fmt == "hh" else "reference_vs_sample"
    if pairs == "human" and fmt != "hh":
        raise ConfigError(
            f"params.yaml: data.pairs 'human' needs human-labelled pairs (data.format hh), "
            f"but the source is {fmt!r}; use 'reference_vs_sample' or 'judge'"
        )
    return pairs


def needs_samples(mode: str) -> bool:
    """Whether ``mode`` samples replies from the base policy."""
    return mode in ("reference_vs_sample", "judge")


def human_pairs(examples: list[Example]) -> list[dict[str, Any]]:
    """Preference rows straight from hh's labels."""
    return [
        preference_row(ex, ex.chosen, ex.rejected, "human", {"pairs": "human"}) for ex in examples
    ]


def reference_vs_sample(
    examples: list[Example], samples: list[Sample], max_chars: int
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """SPIN rows: chosen = reference, rejected = the sample; unusable samples are dropped."""
    if len(samples) != len(examples):
        raise ValueError(f"{len(samples)} samples for {len(examples)} examples")
    rows, dropped = [], []
    for ex, sample in zip(examples, samples, strict=True):
        assert ex.reference is not None  # every loader sets a reference
        try:
            check_pair(ex.reference, sample.text, max_chars)
        except RowError as err:
            detail = f"sampled reply: {err.detail}"
            err = RowError(err.reason, err.field, detail)
            raw = {**ex.to_json(), "rejected": sample.text}
            dropped.append(Rejected.from_error(err, ex.origin, id=ex.id, raw=raw))
            continue
        meta = {"pairs": "reference_vs_sample", "rejected_tokens": sample.n_tokens}
        meta["rejected_eos"] = sample.eos
        # The label is human in the sense that matters downstream: chosen is human-written.
        rows.append(preference_row(ex, ex.reference, sample.text, "human", meta))
    return rows, dropped


def judge_candidates(
    examples: list[Example], samples: list[list[Sample]]
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Unlabelled rows with the distinct non-empty candidates; fewer than 2 -> dropped."""
    if len(samples) != len(examples):
        raise ValueError(f"{len(samples)} candidate lists for {len(examples)} examples")
    rows, dropped = [], []
    for ex, cands in zip(examples, samples, strict=True):
        texts: list[str] = []
        tokens: list[int] = []
        eos: list[bool] = []
        for s in cands:
            if s.text and s.text not in texts:
                texts.append(s.text)
                tokens.append(s.n_tokens)
                eos.append(s.eos)
        if len(texts) < 2:
            reason = EMPTY_TEXT if not texts else CHOSEN_EQUALS_REJECTED
            err = RowError(
                reason, "candidates", f"{len(texts)} distinct non-empty of {len(cands)} sampled"
            )
            raw = {**ex.to_json(), "candidates": [s.text for s in cands]}
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
