"""Preference pairs on the prompts the policy is given.

train_recommender writes ``data/grounded``: the prompt rows train_sft, train_ppo and evaluate
give the policy (crs's grounded in the recommender's candidates, every other task's a copy of
``data/prompts``). score_with_llm (hence the reward model and the critic) and train_dpo read the
pairs of ``data/preference`` on those same prompts through :func:`on_policy_prompts`, so what
they learn from is what the policy is sampled and scored on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

R = TypeVar("R", bound=Mapping[str, Any])


def on_policy_prompts(rows: Iterable[R], prompt_rows: Iterable[Mapping[str, Any]]) -> list[R]:
    """Each preference row on the prompt the policy is given: the ``prompt`` of the prompt row
    with the same ``id`` (``data/grounded``, whose crs rows carry the recommender's candidates),
    that row's ``meta`` over the pair's (``candidates``, the candidates' names in ``movies``).

    A pair and its prompt row come from one :class:`Example`, so for a task whose prompts
    train_recommender copies unchanged (chat, docstring) each row comes back equal, its meta
    keys in the same order. Rows with no prompt row of their id are returned as they are.
    """
    by_id = {str(p["id"]): p for p in prompt_rows}
    out: list[R] = []
    for row in rows:
        seen = by_id.get(str(row["id"]))
        if seen is None:
            out.append(row)
            continue
        meta = {**(row.get("meta") or {}), **(seen.get("meta") or {})}
        out.append(cast(R, {**row, "prompt": seen["prompt"], "meta": meta}))
    return out
