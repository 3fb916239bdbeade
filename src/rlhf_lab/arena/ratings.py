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
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_lab.evaluation.stats import mean_ci

SCORE_LEFT = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}
"""The left model's score for each vote label."""


@dataclass(frozen=True)
class Game:
    a: str
    b: str
    score: float
    """``a``'s score: 1 win, 0.5 tie, 0 loss (``b`` scores ``1 - score``)."""


def games(votes: Iterable[Mapping[str, Any]]) -> list[Game]:
    """One game per vote row of the vote file (same-model comparisons are skipped)."""
    out = []
    for v in votes:
        if v["model_left"] != v["model_right"]:
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


def summary(
    votes: list[Mapping[str, Any]], *, prior: float = 1.0, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Flat ``arena/...`` metrics of a vote file's rows (see docs/metrics.md)."""
    played = games(votes)
    m: dict[str, Any] = {
        "arena/votes": len(votes),
        "arena/pairs": sum(v["label"] in ("left", "right") for v in votes),
        "arena/ties": sum(v["label"] == "tie" for v in votes),
        "arena/both_bad": sum(v["label"] == "both_bad" for v in votes),
        # Position bias: how often the left reply wins a decisive vote (0.5 = none).
        "arena/left_win_fraction": (
            sum(v["label"] == "left" for v in votes)
            / max(1, sum(v["label"] in ("left", "right") for v in votes))
        ),
    }
    if not played:
        return m
    ratings = elo_scale(bradley_terry(played, prior))
    for model, wr in win_rates(played, n_boot=n_boot, seed=seed).items():
        m[f"arena/{model}/games"] = wr.games
        m[f"arena/{model}/win_rate"] = wr.rate
        m[f"arena/{model}/win_rate_lo"] = wr.lo
        m[f"arena/{model}/win_rate_hi"] = wr.hi
        m[f"arena/{model}/elo"] = ratings[model]
    return m
