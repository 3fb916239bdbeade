"""Reward components: every per-reply reward, built in one place from params.

    fns = reward_components.build(["reward_model", "text/length"], params,
                                  reward_model_dir="models/reward")
    fns["text/length"](replies, rows)   # -> one float per reply

A component is a function ``(replies, rows) -> scores``: ``replies`` are decoded model replies,
``rows`` the prompt rows they answer (:class:`~rlhf_lab.data.rows.PromptRow`: ``id``,
``prompt``, ``reference``, ``meta``), and the result is one float per reply, in [0, 1] for the rule
components. PPO (:mod:`rlhf_lab.ppo.composite_score`), ``evaluate`` and ``analyze_rewards``
all get their components from :func:`build`, the way lm-human-preferences builds its reward
from ``make_score_fn(hparams, score_model)``: whatever a component needs from params
(``reward.length_band``, the crs ``data.catalogue``, ``judge``, the reward-model directory) is
bound here once, never through module globals a caller must remember to set.

Names are namespaced by task (``crs/recommendation``, ``docstring/param_coverage``); generic
text rewards have the ``text/`` prefix and apply to every task; ``reward_model`` and ``judge``
hold weights. Each task declares its rules (:attr:`rlhf_lab.tasks.base.Task.reward_rules`, pure
scoring functions that do not import this module); :data:`RULES` below collects them with the
``text/*`` ones into the one table of names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhf_lab.data.rows import Row
from rlhf_lab.errors import ConfigError
from rlhf_lab.tasks import text
from rlhf_lab.tasks.registry import TASKS, get_task

if TYPE_CHECKING:
    from rlhf_lab.config import JudgeConfig, Params

RewardFn = Callable[[Sequence[str], Sequence[Row]], Sequence[float] | torch.Tensor]

REWARD_MODEL = "reward_model"
JUDGE = "judge"
MODEL_COMPONENTS = (REWARD_MODEL, JUDGE)
JUDGE_FAILED = 0.5
"""Unit score given to a reply the judge failed to rate: neutral, neither rewarded nor punished."""


@dataclass(frozen=True)
class RuleContext:
    """What rule components read from params, loaded once."""

    length_band: tuple[int, int]
    """``reward.length_band``: the ``text/length`` band in whitespace tokens."""
    context: Any = None
    """The task's context (:attr:`rlhf_lab.tasks.base.Task.load_context`; crs: the
    ``data.catalogue`` movies known beyond each dialogue's own), or None."""

    @classmethod
    def from_params(cls, params: Params, task: str | None = None) -> RuleContext:
        """The context of ``task`` (default ``params.task.name``) read from ``params``."""
        band = params.reward.length_band
        context = get_task(task or params.task.name).load_context(params)
        return cls((int(band[0]), int(band[1])), context)


def _task_rule(build: Callable[[Any], RewardFn]) -> Callable[[RuleContext], RewardFn]:
    return lambda ctx: build(ctx.context)


RULES: dict[str, Callable[[RuleContext], RewardFn]] = {
    "text/bleu": lambda ctx: text.bleu_reward,
    "text/bleu2": lambda ctx: text.bleu2_reward,
    "text/distinct": lambda ctx: text.distinct_reward,
    "text/length": lambda ctx: text.length_reward(*ctx.length_band),
    **{n: _task_rule(b) for task in TASKS.values() for n, b in task.reward_rules.items()},
}
"""Rule component name -> builder from the :class:`RuleContext`: the generic ``text/*`` ones,
then every task's :attr:`~rlhf_lab.tasks.base.Task.reward_rules`."""


def rule_names() -> list[str]:
    """Every rule component, in table order."""
    return list(RULES)


def known() -> list[str]:
    """Every component a ``reward.weights`` key may name."""
    return [*MODEL_COMPONENTS, *RULES]


def task_rules(task: str, *, generic: bool = False) -> list[str]:
    """The task's own rule components (``<task>/*``), plus the ``text/*`` ones if ``generic``."""
    prefixes = (f"{task}/", "text/") if generic else (f"{task}/",)
    return [n for n in RULES if n.startswith(prefixes)]


TOTAL = "total"
"""Name of a task's rule reward without the reference-based components (``analyze_rewards``'
total; evaluate's ``<m>/reward/total``): what the references themselves can be scored on."""
TOTAL_REF = "total_with_reference"
"""Name of a task's rule reward with every weighted component, BLEU included: the one a
policy is trained on (evaluate's ``<m>/reward/total_with_reference``)."""


def default_weights(task: str) -> dict[str, float]:
    """The task's own weights (:meth:`rlhf_lab.tasks.base.Task.weights`: docstring's
    DEFAULT_WEIGHTS; crs's single component)."""
    return get_task(task).weights()


def task_weights(task: str, reward_weights: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """(weights of the task's components, where they came from): ``reward.weights`` when it
    gives any of them a positive weight, else :func:`default_weights`."""
    names = task_rules(task)
    given = {n: float(w) for n, w in reward_weights.items() if n in names and w > 0}
    if given:
        return given, "reward.weights"
    return default_weights(task), "task defaults"


def is_reference_based(component: str) -> bool:
    """Does ``component`` compare the reply with the reference (BLEU-like)?"""
    return component.rsplit("/", 1)[-1].startswith(("bleu", "rouge"))


def _reward_model_component(model_dir: str | Path) -> RewardFn:
    from rlhf_lab.reward_scorer import RewardModel

    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(
            f"params.yaml: reward.weights.reward_model is non-zero but {model_dir} holds no "
            "reward model (run `rlhf-lab train_reward`)"
        )
    rm = RewardModel(model_dir)

    def score(replies: Sequence[str], rows: Sequence[Row]) -> torch.Tensor:
        # Normalised with train_reward's mean/std: ~N(0, 1) on the training replies.
        return rm.score([r["prompt"] for r in rows], list(replies), normalize=True)

    return score


def _judge_component(judge_cfg: JudgeConfig, task: str, context: Any) -> RewardFn:
    # Imported only here: the judge loads a second LLM, which PPO must not pay for at weight 0.
    from rlhf_lab.judge import OVERALL, build_judge, to_unit

    judge = build_judge(judge_cfg, task, use_cache=False, context=context)

    def score(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
        out = []
        for s in judge.score(rows, replies):
            unit = to_unit(s.get(OVERALL))
            out.append(JUDGE_FAILED if unit is None else float(unit))
        return out

    return score


def build(
    names: Sequence[str],
    params: Params,
    *,
    reward_model_dir: str | Path | None = None,
    context: RuleContext | None = None,
) -> dict[str, RewardFn]:
    """The component functions for ``names``, bound to ``params``.

    An unknown name fails with the known ones. ``reward_model`` needs ``reward_model_dir``;
    ``judge`` is built from ``params.judge``. ``context`` reuses an already loaded
    :class:`RuleContext` (it is built from ``params`` otherwise).
    """
    unknown = [n for n in names if n not in known()]
    if unknown:
        raise ConfigError(
            f"params.yaml: reward.weights: unknown component {unknown[0]!r}; "
            f"known: {', '.join(known())}"
        )
    ctx = context or RuleContext.from_params(params)
    out: dict[str, RewardFn] = {}
    for name in names:
        if name == REWARD_MODEL:
            if reward_model_dir is None:
                raise ConfigError("reward_model component needs models/reward")
            out[name] = _reward_model_component(reward_model_dir)
        elif name == JUDGE:
            if params.judge.backend == "none":
                raise ConfigError(
                    "params.yaml: reward.weights.judge is non-zero but judge.backend is 'none'"
                )
            out[name] = _judge_component(params.judge, params.task.name, ctx.context)
        else:
            out[name] = RULES[name](ctx)
    return out
