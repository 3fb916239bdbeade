"""Ratings from arena votes: per-model win rates with CIs, and Bradley–Terry ratings.

Every vote is a *game* between its two models. A win scores 1, a loss 0; ``tie`` and
``both_bad`` score 0.5 for each side, as Chatbot Arena counts "tie" and "tie (bothbad)"
(Chiang et al. 2024, "Chatbot Arena", §4): neither reply was preferred.

* win rate: a model's mean score over its games, with a percentile-bootstrap CI over games
  (``rlhf_lab.evaluation.stats.mean_ci``);
* Bradley–Terry: ``P(i beats j) = p_i / (p_i + p_j)``, fitted by maximum likelihood with
  Hunter's MM iteration (Hunter 2004, "MM algorithms for generalized Bradley–Terry models",
  eq. 3), a tie counting as half a win for each side. A model that never lost (or never won)
  would have an infinite rating, so every pair of models also gets ``prior`` virtual tied
  games, which keeps the fit finite and pulls small samples towards equal strength.
  Ratings are shown on the Elo scale, ``1000 + 400 log10(p_i)`` with the strengths'
  geometric mean at 1 (so the ratings average 1000): a 400-point gap means 10:1 odds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_lab.evaluation.stats import mean_ci

MIN_SAMPLES = 10
"""Below this many games (or rated replies) a model's interval is not shown: a handful of votes
gives degenerate bootstrap intervals such as 1.00 [1.00, 1.00], which read as certainty."""

SCORE_LEFT = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}
"""The left model's score for each vote label."""


@dataclass(frozen=True)
class Game:
    a: str
    b: str
    score: float
    """``a``'s score: 1 win, 0.5 tie, 0 loss (``b`` scores ``1 - score``)."""


def games(votes: Iterable[Mapping[str, Any]]) -> list[Game]:
    """One game per vote row of the vote file.

    Same-model comparisons and identical replies (``"identical": true``, flagged by the app) are
    skipped: two equal texts say nothing about which model is better.
    """
    out = []
    for v in votes:
        if v["model_left"] != v["model_right"] and not v.get("identical"):
            out.append(Game(v["model_left"], v["model_right"], SCORE_LEFT[v["label"]]))
    return out


@dataclass(frozen=True)
class WinRate:
    rate: float
    lo: float
    hi: float
    games: int


def win_rates(
    played: list[Game], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, WinRate]:
    """Each model's mean score over its games, with a bootstrap CI (models in name order)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for g in played:
        scores[g.a].append(g.score)
        scores[g.b].append(1.0 - g.score)
    out = {}
    for model in sorted(scores):
        rate, lo, hi = mean_ci(scores[model], confidence, n_boot, seed)
        out[model] = WinRate(rate, lo, hi, len(scores[model]))
    return out


def bradley_terry(
    played: list[Game], prior: float = 1.0, tol: float = 1e-10, max_iter: int = 10_000
) -> dict[str, float]:
    """Bradley–Terry strengths (geometric mean 1) by Hunter's MM iteration; see the docstring."""
    models = sorted({g.a for g in played} | {g.b for g in played})
    if len(models) < 2:
        return {m: 1.0 for m in models}
    wins = dict.fromkeys(models, 0.0)
    n: dict[tuple[str, str], float] = defaultdict(float)
    for g in played:
        wins[g.a] += g.score
        wins[g.b] += 1.0 - g.score
        n[g.a, g.b] += 1.0
        n[g.b, g.a] += 1.0
    for i in models:
        for j in models:
            if i != j:
                n[i, j] += prior
                wins[i] += prior / 2.0  # half of each virtual tie with every other model
    if any(w <= 0.0 for w in wins.values()):
        raise ValueError("a model with no win and prior 0 has no finite Bradley–Terry strength")
    p = dict.fromkeys(models, 1.0)
    for _ in range(max_iter):
        new = {}
        for i in models:
            denom = sum(n[i, j] / (p[i] + p[j]) for j in models if j != i and n[i, j])
            new[i] = wins[i] / denom
        # Normalise (the model fixes only ratios): geometric mean 1.
        log_mean = sum(math.log(v) for v in new.values()) / len(new)
        new = {m: v / math.exp(log_mean) for m, v in new.items()}
        change = max(abs(math.log(new[m] / p[m])) for m in models)
        p = new
        if change < tol:
            break
    return p


def elo_scale(strengths: Mapping[str, float], base: float = 1000.0) -> dict[str, float]:
    """Bradley–Terry strengths as Elo-scale ratings: ``base + 400 log10(p)``."""
    return {m: base + 400.0 * math.log10(p) for m, p in strengths.items()}


def elo_ci(
    played: list[Game],
    prior: float = 1.0,
    confidence: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap CI of each model's Elo-scale rating: games resampled with
    replacement and the Bradley–Terry fit redone, as Chatbot Arena's leaderboard does
    (Chiang et al. 2024, §5). A model missing from a resample is left out of that draw."""
    if not played:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_boot):
        sample = [played[i] for i in rng.integers(0, len(played), len(played))]
        for model, r in elo_scale(bradley_terry(sample, prior, tol=1e-8)).items():
            draws[model].append(r)
    alpha = (1.0 - confidence) / 2.0
    return {
        m: (float(np.quantile(d, alpha)), float(np.quantile(d, 1.0 - alpha)))
        for m, d in sorted(draws.items())
    }


def _prompt_key(messages: Iterable[Mapping[str, Any]]) -> tuple[tuple[Any, Any], ...]:
    """A prompt's identity: its messages' roles and contents (what a vote row stores)."""
    return tuple((m.get("role"), m.get("content")) for m in messages)


def prompt_coverage(
    votes: Iterable[Mapping[str, Any]], prompts: Iterable[Iterable[Mapping[str, Any]]]
) -> dict[str, int]:
    """How many distinct held-out ``prompts`` have at least one vote (any label), of how many.

    Read back from the vote file, so it survives a server restart (the page's "shown" count is
    in memory). A typed prompt counts only when it equals a held-out one."""
    held = {_prompt_key(p) for p in prompts}
    voted = {_prompt_key(v.get("prompt") or ()) for v in votes} & held
    return {"arena/prompts_voted": len(voted), "arena/prompts": len(held)}


def summary(
    votes: list[Mapping[str, Any]], *, prior: float = 1.0, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Flat ``arena/...`` metrics of a vote file's rows (see docs/metrics.md)."""
    played = games(votes)
    decisive = [v["label"] == "left" for v in votes if v["label"] in ("left", "right")]
    m: dict[str, Any] = {
        "arena/votes": len(votes),
        "arena/pairs": sum(v["label"] in ("left", "right") for v in votes),
        "arena/ties": sum(v["label"] == "tie" for v in votes),
        "arena/both_bad": sum(v["label"] == "both_bad" for v in votes),
        "arena/identical": sum(bool(v.get("identical")) for v in votes),
        # Position bias: how often the left reply wins a decisive vote (0.5 = none).
        "arena/left_win_fraction": (
            sum(v["label"] == "left" for v in votes)
            / max(1, sum(v["label"] in ("left", "right") for v in votes))
        ),
    }
    if len(decisive) >= MIN_SAMPLES:
        _, m["arena/left_win_fraction_lo"], m["arena/left_win_fraction_hi"] = mean_ci(
            decisive, n_boot=n_boot, seed=seed
        )
    for (a, b), n in sorted(Counter(tuple(sorted((g.a, g.b))) for g in played).items()):
        m[f"arena/pair/{a} vs {b}"] = n
    if not played:
        return m
    ratings = elo_scale(bradley_terry(played, prior))
    # The Elo bootstrap refits per draw; a tenth of n_boot keeps the report within seconds.
    elo_bounds = elo_ci(played, prior, n_boot=max(100, n_boot // 10), seed=seed)
    for model, wr in win_rates(played, n_boot=n_boot, seed=seed).items():
        m[f"arena/{model}/games"] = wr.games
        m[f"arena/{model}/win_rate"] = wr.rate
        m[f"arena/{model}/elo"] = ratings[model]
        if wr.games >= MIN_SAMPLES:
            m[f"arena/{model}/win_rate_lo"] = wr.lo
            m[f"arena/{model}/win_rate_hi"] = wr.hi
            m[f"arena/{model}/elo_lo"], m[f"arena/{model}/elo_hi"] = elo_bounds[model]
    return m


def with_ci(m: Mapping[str, Any], key: str, n: int, fmt: str = ".2f", unit: str = "votes") -> str:
    """``key``'s value with its ``[lo, hi]`` from the flat metrics, or a small-sample warning."""
    value = format(m[key], fmt)
    if f"{key}_lo" not in m:
        return f"{value} (too few {unit}: {n} < {MIN_SAMPLES})"
    return f"{value} [{format(m[f'{key}_lo'], fmt)}, {format(m[f'{key}_hi'], fmt)}]"


def leaderboard(m: Mapping[str, Any]) -> dict[str, Any]:
    """The leaderboard of :func:`summary`'s metrics (plus ``rlhf_lab.arena.scores``'), for the
    report and the page: models best Elo first, votes per pair, left/right position bias."""
    models = sorted(
        {k.removeprefix("arena/").removesuffix("/elo") for k in m if k.endswith("/elo")},
        key=lambda x: -m[f"arena/{x}/elo"],
    )
    rows = []
    for model in models:
        k = f"arena/{model}"
        human = {
            key.removeprefix(f"{k}/human/"): m[key]
            for key in m
            if key.startswith(f"{k}/human/") and not key.endswith(("_lo", "_hi", "/replies"))
        }
        rows.append(
            {
                "model": model,
                "games": m[f"{k}/games"],
                "elo": with_ci(m, f"{k}/elo", m[f"{k}/games"], ".0f"),
                "win_rate": with_ci(m, f"{k}/win_rate", m[f"{k}/games"]),
                "human": {
                    r: with_ci(m, f"{k}/human/{r}", m.get(f"{k}/human/replies", 0), unit="ratings")
                    for r in human
                },
            }
        )
    decisive = m["arena/pairs"]
    return {
        "votes": m["arena/votes"],
        "models": rows,
        "pairs": {k.removeprefix("arena/pair/"): v for k, v in m.items() if "/pair/" in k},
        "left_wins": with_ci(m, "arena/left_win_fraction", decisive),
        "identical": m.get("arena/identical", 0),
        "coverage": {
            "voted": m.get("arena/prompts_voted", 0),
            "prompts": m.get("arena/prompts", 0),
        },
    }
