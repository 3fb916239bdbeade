"""What a PPO run depends on, recorded in every checkpoint so a resume can refuse a changed input.

A fingerprint is a flat ``{dotted key: JSON value}`` dict: the params train_ppo reads (the same
keys ``dvc.yaml`` lists for the stage, flattened to leaves such as ``reward.weights.judge``),
the sha256 of the prompts file, a digest of each model directory it loads, and a digest of the
``rlhf_lab`` source. Digests cover file *contents* under relative names, so moving or copying
the repository (or ``dvc checkout`` restoring the same models) keeps them; a safetensors header
or a size/mtime would not see retrained weights of the same shape.

:func:`changes` lists what differs between two fingerprints in the words of the one-line error
(``reward.weights.judge changed (checkpoint 0.0 vs now 0.5)``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from rlhf_lab.config import Params
from rlhf_lab.io import dir_digest, sha256_file

CODE = "code"
"""Key of the ``rlhf_lab`` source digest (the only key an explicit ``--resume`` may override)."""
_SHOWN = 3
"""Changes spelled out in a message; the rest are counted."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": leaf}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def source_digest() -> str:
    """Digest of the ``rlhf_lab`` package's Python source (what DVC's ``src`` deps hash)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a digest: 12 hex digits tell two apart
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def changes(
    saved: Mapping[str, Any], now: Mapping[str, Any], ignore: AbstractSet[str] = frozenset()
) -> list[str]:
    """``"<key> changed (checkpoint <old> vs now <new>)"`` for each key that differs, sorted."""
    out = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if key not in ignore and old != new:
            out.append(f"{key} changed (checkpoint {_show(old)} vs now {_show(new)})")
    return out


def summarise(found: list[str]) -> str:
    """The first few changes joined for a one-line message, the rest counted."""
    shown = ", ".join(found[:_SHOWN])
    rest = len(found) - _SHOWN
    return shown + (f", and {rest} more" if rest > 0 else "")


STAGE_PARAMS = (
    "task",
    "judge",
    "reward.weights",
    "reward.weights_end",
    "reward.length_band",
    "data.catalogue",
    "models.mixed_precision",
)
"""The params train_ppo reads besides ``ppo`` (its ``dvc.yaml`` params); the trainer adds ppo,
and ``critic.shared_trunk`` from the model it trains (so a checkpoint of the other critic layout
is refused whoever builds the trainer)."""


def stage_fingerprint(
    params: Params,
    *,
    files: Mapping[str, str | Path | None],
    dirs: Mapping[str, str | Path | None],
) -> dict[str, Any]:
    """The fingerprint of train_ppo's inputs other than ``ppo``: :data:`STAGE_PARAMS`, the
    sha256 of each of ``files`` and the :func:`dir_digest` of each of ``dirs`` (None or a
    missing path records null: an input the run does not read), and the source digest."""
    out: dict[str, Any] = {}
    for dotted in STAGE_PARAMS:
        value: Any = params
        for part in dotted.split("."):
            value = getattr(value, part)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        out.update(flatten({dotted: value}))
    for name, path in files.items():
        out[name] = sha256_file(path) if path is not None and Path(path).is_file() else None
    for name, path in dirs.items():
        out[name] = dir_digest(path) if path is not None and Path(path).is_dir() else None
    out[CODE] = source_digest()
    return out
