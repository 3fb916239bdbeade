"""The README is a front door: short, the two commands first, its results table the
committed run's numbers."""

from __future__ import annotations

import json
import re

from .conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_short_and_the_two_commands_first():
    assert len(README.splitlines()) <= 200
    first_block = README.split("```")[1]
    assert "make repro" in first_block and "make test" in first_block
    assert not re.search(r"\b(stop|issue) \d+\b|\bsession\b", README)


def _row(label: str) -> list[str]:
    (line,) = [ln for ln in README.splitlines() if ln.startswith(f"| {label}")]
    return [c.strip().strip("*") for c in line.strip("|").split("|")][1:]


def test_results_table_is_the_committed_run():
    m = json.loads((REPO / "metrics/evaluate.json").read_text())
    assert _row("reward-model score") == [
        f"{m[f'{k}/rm_score']:.3f}" for k in ("sft", "ppo", "dpo")
    ]
    assert _row("reply length") == [f"{m[f'{k}/tokens']:.1f}" for k in ("sft", "ppo", "dpo")]
    assert _row("KL(policy")[1:] == [f"{m[f'delta/{p}/kl']:.2f}" for p in ("ppo", "dpo")]
    wins = [
        f"{m[f'delta/{p}/win_rate_rm']:.2f} / {m[f'delta/{p}/win_rate_rm_lc']:.2f}"
        for p in ("ppo", "dpo")
    ]
    assert _row("win rate vs SFT")[1:] == wins
    assert _row("verdict")[1] == m["verdict/ppo/decision"]
    assert _row("verdict")[2].startswith(m["verdict/dpo/decision"])
