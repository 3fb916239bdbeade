"""Presets: the ``params.yaml`` overrides that switch to the crs or docstring task, or shrink
the default run to a few minutes (``quick``).

Switching task or scale is a params change, nothing else. A preset is a partial
``params.yaml`` (the same nesting, validated by the same classes in :mod:`rlhf_lab.config`), so
there are two equivalent ways to apply one:

    rlhf-lab params --preset docstring > params.yaml           # the full documented file
    dvc exp run -S 'task.name=docstring' -S ...                 # the printed -S lines

``rlhf-lab params --preset NAME`` prints both: the ``-S`` lines as comments at the top, then the
documented params with the preset applied (to the built-in defaults, or to ``--base FILE``).
Mappings merge key by key, as DVC's ``-S '++key={...}'`` does, so a preset applied to a
``params.yaml`` keeps every value it does not name.

The data sources below are the public copies in ``../shared/data`` (ReDial, and the Barone &
Sennrich code-docstring corpus); they are documented examples, not requirements: any local file
in the same format or a hub id works (``community-datasets/re_dial`` for ReDial,
CodeSearchNet-style ``{"code", "docstring"}`` rows for docstrings). Sizes are for a laptop CPU:
the per-stage compute settings stay as ``params.yaml`` has them, and a task preset only changes
what the task needs (docstring prompts hold a whole function, so its token limits are longer).
``quick`` changes sizes only (docs/experiments.md: what its numbers mean).
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlhf_lab.config import Params, documented_yaml, load_params, parse_params
from rlhf_lab.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A named partial params.yaml."""

    description: str
    """One line: what the preset runs."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Nested like params.yaml: ``{"task": {"name": "crs"}, ...}``."""


PRESETS: dict[str, Preset] = {
    "crs": Preset(
        "empathetic movie recommendation on ReDial: replies grounded in the recommender's "
        "candidates (reward model + grounded hit - invented titles)",
        {
            "task": {"name": "crs"},
            "data": {
                "source": "../shared/data/redial/train_data.jsonl.gz",
                "format": "redial",
                # Names the @ids that a dialogue's movieMentions lacks, and lets the
                # recommendation reward recognise movies outside the dialogue.
                "catalogue": "../shared/data/redial/movies_with_mentions.csv",
                "max_examples": 300,
            },
            "reward": {
                # The prompts carry the recommender's candidates (train_recommender), so
                # crs/grounded: 1 for a gold movie, 0.6 for another candidate, 0.3 for another
                # known movie, 0 for none (it replaces crs/recommendation, which has no
                # candidate tier); crs/no_hallucination: the penalty for an invented title;
                # the reward model (~N(0, 1)) keeps the reply fluent and on topic.
                # crs/empathy (VADER intensity) is reported, not weighted: a lexicon score
                # rewards feeling words whether or not they fit the dialogue.
                # text/length off: the chat profile's word band (12-40) is longer than ReDial's
                # recommender turns (~9 words), and weights merge key by key.
                "weights": {
                    "reward_model": 1.0,
                    "crs/grounded": 1.0,
                    "crs/no_hallucination": 0.5,
                    "crs/recommendation": 0.0,
                    "text/length": 0.0,
                },
            },
        },
    ),
    "docstring": Preset(
        "Python function -> docstring (reward model + static-analysis rewards from the ast)",
        {
            "task": {"name": "docstring"},
            "data": {
                "source": "../shared/data/docstring/valid.jsonl.gz",
                "format": "docstring",
                "max_examples": 300,
                # A prompt holds the whole function: 1200 characters is ~400 tokens. Longer
                # functions (15% of the Barone & Sennrich corpus) are dropped as too_long, so
                # the invalid-row limit is raised above that share.
                "max_chars": 1200,
                "max_invalid_fraction": 0.3,
                "sample_max_new_tokens": 64,
            },
            "judge": {"max_length": 768},
            "reward": {
                # The rule weights are tasks.docstring.DEFAULT_WEIGHTS (they sum to 1, so the
                # rules add at most 1 to the reward model's ~N(0, 1) score).
                "weights": {
                    "reward_model": 1.0,
                    "docstring/param_coverage": 0.3,
                    "docstring/return_mention": 0.15,
                    "docstring/raises_mention": 0.1,
                    "docstring/control_flow": 0.1,
                    "docstring/length": 0.1,
                    "docstring/bleu": 0.25,
                    # Weights merge key by key, so the chat profile's reply-length band (chat
                    # words) would carry over; docstring/length is the task's own length term.
                    "text/length": 0.0,
                },
            },
            # Prompt + reply must fit, or the prompt is cut from the left (losing the `def`).
            "sft": {"max_length": 512},
            "dpo": {"max_length": 512},
            "critic": {"max_length": 512},
            "ppo": {"max_prompt_length": 448, "max_new_tokens": 64},
            "eval": {"max_new_tokens": 64},
        },
    ),
    "quick": Preset(
        "the default chat run in minutes on a laptop CPU: the embedded SmolLM2 and MiniLM on 60 "
        "dialogues, 4 PPO steps of 8 replies, about 10 test prompts (a smoke run, not a result)",
        {
            # 60 rows split 70/10/20 by hash: ~42 training pairs, ~10 held-out test prompts.
            # Replies keep the default 32 tokens: at 24, 40% of SFT's replies had no EOS yet, and
            # ppo.missing_eos_penalty then outweighed every other part of the PPO score.
            "data": {"max_examples": 60},
            "reward": {"train": {"epochs": 2}},
            "sft": {"max_length": 128},
            "dpo": {"max_length": 128},
            # 4 rollouts of 8 replies, one update pass each: long enough to move the KL and
            # the score off step 0, far too short to conclude anything from them.
            "ppo": {"steps": 4, "batch_size": 8, "epochs": 1},
            # Every test prompt (~10): a win rate's 95% CI spans about +-0.3 at that size.
            "eval": {"num_prompts": 12, "n_boot": 1000},
        },
    ),
}
"""Every preset, by name (``rlhf-lab params --preset NAME``)."""


def get(name: str) -> Preset:
    """The preset called ``name``; a one-line ConfigError lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: mappings merge key by key, anything else replaces.

    The same rule as DVC's ``-S '++key={...}'`` (OmegaConf merge), so the printed ``-S``
    lines and the printed file agree.
    """
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_params(name: str, base: Params | None = None) -> Params:
    """``base`` (default: the built-in defaults) with the preset applied, validated."""
    raw = (base or Params()).model_dump(mode="json")
    return parse_params(merge(raw, get(name).overrides), f"preset {name}")


_PLAIN = re.compile(r"[A-Za-z0-9_./@+-]+")
_NOT_A_STRING = re.compile(r"(?i)null|true|false|nan|inf|[-+]?[\d.e_+-]+")


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (what ``dvc exp run -S`` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and not _NOT_A_STRING.fullmatch(value):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_hydra_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a -S value")


def _leaves(
    model: type[BaseModel], overrides: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, bool]]:
    """``(dotted key, value, is_mapping_field)`` for every value a preset sets."""
    out: list[tuple[str, Any, bool]] = []
    for key, value in overrides.items():
        ann = model.model_fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, Mapping):
            out.extend(_leaves(ann, value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value, isinstance(value, Mapping)))
    return out


def dvc_overrides(name: str) -> list[str]:
    """The preset as ``dvc exp run -S`` values, e.g. ``task.name=crs``.

    A mapping-valued key (``reward.weights``) is written ``++key={...}``: plain ``key=`` may
    not add keys that params.yaml lacks (Hydra's struct mode), ``++`` adds or merges them.
    """
    return [
        f"{'++' if is_map else ''}{key}={_hydra_value(value)}"
        for key, value, is_map in _leaves(Params, get(name).overrides)
    ]


def dvc_command(name: str) -> str:
    """The one ``dvc exp run`` line that applies the preset to params.yaml (shell-quoted)."""
    return "dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in dvc_overrides(name))


def preset_yaml(name: str, base_path: str | Path | None = None) -> str:
    """The documented params.yaml with the preset applied, its -S lines as a comment header.

    ``base_path``: a params file to apply the preset to (default: the built-in defaults).
    """
    preset = get(name)
    base = load_params(base_path) if base_path is not None else None
    params = preset_params(name, base)
    on = f"{base_path}" if base_path is not None else "the built-in defaults"
    header = [
        f"# rlhf-lab params --preset {name}: {preset.description}.",
        f"# This file is {on} with the preset applied. The same change to",
        "# params.yaml as a DVC experiment (mappings merge key by key):",
        "#",
        *(f"#   {line}" for line in _wrap_command(name)),
        "#",
    ]
    return "\n".join(header) + "\n" + documented_yaml(params)


def _wrap_command(name: str) -> list[str]:
    parts = [f"-S {shlex.quote(o)}" for o in dvc_overrides(name)]
    return ["dvc exp run \\", *(f"    {p} \\" for p in parts[:-1]), f"    {parts[-1]}"]
