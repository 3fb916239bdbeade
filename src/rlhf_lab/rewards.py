"""Rule-based reward components: a small registry that tasks fill in.

A component is a pure function ``(replies, rows) -> scores``: ``replies`` are decoded model
replies, ``rows`` the prompt rows they answer (DESIGN.md "prompt row": ``id``, ``prompt``,
``reference``, ``meta``), and the result is one float per reply, in [0, 1] unless the
component says otherwise. Model-backed components (the reward model, the judge) are built by
the composite scorer in ``rlhf_lab.ppo.scoring`` because they hold weights; everything that is
a function of text alone lives here, so PPO, evaluate and ``analyze_rewards`` share one
definition of each reward.

Names are namespaced by task (``crs/recommendation``, ``docstring/param_coverage``); generic
text rewards (``text/bleu``, ``text/distinct``, ``text/length``) have the ``text/`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
RewardFn = Callable[[Sequence[str], Sequence[Row]], list[float]]

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn`` as the reward component ``name``."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward component {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the task modules runs their @register decorators.
    from rlhf_lab.tasks import crs, docstring, text  # noqa: F401


def get(name: str) -> RewardFn:
    """The component called ``name``; a clear error lists the known ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown reward component {name!r}; known: {known}") from None


def names() -> list[str]:
    """All registered component names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)
