"""The composite PPO score: a weighted sum of reward components, with an optional schedule.

    score(reply) = Σ_c  w_c(step) · component_c(reply)

Components (``reward.weights`` keys):

- ``reward_model``: the Bradley–Terry reward model (``models/reward``), normalised with the
  mean/std of its scores on the training replies that ``train_reward`` saved (so ~N(0, 1));
- ``judge``: the LLM judge's ``overall`` rating mapped to [0, 1] (``rlhf_lab.judge.to_unit``);
  only built — and ``rlhf_lab.judge`` only imported — when its weight is non-zero somewhere;
- any rule component (``text/bleu``, ``text/distinct``, ``text/length``,
  ``crs/recommendation``, ``docstring/...``), in [0, 1].

Every component comes from :func:`rlhf_lab.reward_components.build`, the one factory that PPO,
evaluate and analyze_rewards share.

Weights: constant (``reward.weights``), or, when ``reward.weights_end`` is set, linear from
``weights`` at the first PPO step to ``weights_end`` at the last (a component missing from one
side has weight 0 there). Every component with a non-zero weight at any step is computed at
every step, so its curve is continuous even while its weight is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhf_lab import reward_components
from rlhf_lab.data.rows import Row
from rlhf_lab.errors import ConfigError

if TYPE_CHECKING:
    from rlhf_lab.config import Params

ComponentFn = reward_components.RewardFn


def scheduled_weights(
    start: Mapping[str, float],
    end: Mapping[str, float] | None,
    step: int,
    total_steps: int,
) -> dict[str, float]:
    """Weights at ``step`` (0-based) of ``total_steps``: ``start`` → ``end`` linearly.

    ``end=None`` keeps ``start``. The first step uses ``start`` exactly, the last ``end``.
    """
    if end is None:
        return dict(start)
    frac = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    names = list(dict.fromkeys([*start, *end]))
    return {n: (1.0 - frac) * start.get(n, 0.0) + frac * end.get(n, 0.0) for n in names}


def active_components(start: Mapping[str, float], end: Mapping[str, float] | None) -> list[str]:
    """Components with a non-zero weight at some step (in order of first appearance)."""
    names = list(dict.fromkeys([*start, *(end or {})]))
    return [n for n in names if start.get(n, 0.0) != 0.0 or (end or {}).get(n, 0.0) != 0.0]


@dataclass
class Scores:
    """One batch scored: the composite and each component, one value per reply."""

    total: torch.Tensor
    """Composite score [B] (float32)."""
    components: dict[str, torch.Tensor]
    """Unweighted component values [B] each."""
    weights: dict[str, float]
    """The weights used at this step."""

    def means(self) -> dict[str, float]:
        """``reward/<component>`` → batch mean, for logging."""
        return {f"reward/{k}": float(v.float().mean()) for k, v in self.components.items()}


class CompositeScorer:
    """``(replies, rows, step) → Scores``: the weighted sum of named component functions.

    ``components`` maps each name to ``(replies, rows) -> values``; build the standard ones with
    :func:`build_components`, or pass your own (tests use a synthetic reward this way).
    """

    def __init__(
        self,
        components: Mapping[str, ComponentFn],
        weights: Mapping[str, float],
        weights_end: Mapping[str, float] | None = None,
        total_steps: int = 1,
    ) -> None:
        needed = active_components(weights, weights_end)
        if not needed:
            raise ConfigError("params.yaml: reward.weights: every weight is 0; nothing to optimise")
        missing = [n for n in needed if n not in components]
        if missing:
            raise ConfigError(f"params.yaml: reward.weights: no component built for {missing}")
        self.components = {n: components[n] for n in needed}
        self.weights = dict(weights)
        self.weights_end = dict(weights_end) if weights_end is not None else None
        self.total_steps = total_steps

    def weights_at(self, step: int) -> dict[str, float]:
        w = scheduled_weights(self.weights, self.weights_end, step, self.total_steps)
        return {n: w.get(n, 0.0) for n in self.components}

    def __call__(self, replies: Sequence[str], rows: Sequence[Row], step: int = 0) -> Scores:
        if len(replies) != len(rows):
            raise ValueError(f"got {len(replies)} replies but {len(rows)} rows")
        weights = self.weights_at(step)
        values: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(replies), dtype=torch.float32)
        for name, fn in self.components.items():
            v = torch.as_tensor(fn(replies, rows), dtype=torch.float32).reshape(-1).cpu()
            if v.shape[0] != len(replies):
                raise ValueError(
                    f"reward component {name!r} returned {v.shape[0]} values "
                    f"for {len(replies)} replies"
                )
            values[name] = v
            total = total + weights[name] * v
        return Scores(total, values, weights)


# ---------------------------------------------------------------------------------------------
# building the standard components
# ---------------------------------------------------------------------------------------------


def build_scorer(
    params: Params,
    total_steps: int,
    *,
    reward_model_dir: str | Path | None = None,
    extra_components: Mapping[str, ComponentFn] | None = None,
) -> CompositeScorer:
    """The scorer ``params.reward`` describes (components with zero weight are not built)."""
    reward_cfg = params.reward
    names = active_components(reward_cfg.weights, reward_cfg.weights_end)
    extra = dict(extra_components or {})
    built = reward_components.build(
        [n for n in names if n not in extra], params, reward_model_dir=reward_model_dir
    )
    return CompositeScorer(
        {**built, **extra}, reward_cfg.weights, reward_cfg.weights_end, total_steps
    )


def describe(scorer: CompositeScorer) -> dict[str, Any]:
    """Weights at the start and the end, for provenance and the summary table."""
    return {
        "weights": scorer.weights_at(0),
        "weights_end": scorer.weights_at(max(scorer.total_steps - 1, 0)),
    }
