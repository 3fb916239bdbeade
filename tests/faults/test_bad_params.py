"""Bad params: every float key, at any depth, rejects NaN / ±inf (and negatives where it has a
lower bound) with one line naming the dotted key; a non-UTF-8 params file is one line too."""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.config import Params, parse_params
from rlhf_lab.errors import ConfigError


def _float_kind(annotation: object) -> str | None:
    """'float' for float / float | None, 'dict' for dict[str, float] (| None), else None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _float_kind(inner[0]) if len(inner) == 1 else None
    if annotation is float:
        return "float"
    if typing.get_origin(annotation) is dict and args[1:] == (float,):
        return "dict"
    return None


def _has_nonnegative_bound(metadata: list[object]) -> bool:
    return any(
        (isinstance(m, annotated_types.Ge) and m.ge >= 0)
        or (isinstance(m, annotated_types.Gt) and m.gt >= 0)
        for m in metadata
    )


def float_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple]:
    """(path, is_dict, has a lower bound >= 0) for every float param under ``model``."""
    out = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += float_keys(ann, path)
        elif kind := _float_kind(ann):
            out.append((path, kind == "dict", _has_nonnegative_bound(field.metadata)))
    return out


FLOAT_KEYS = float_keys(Params)
CASES = [
    pytest.param(path, is_dict, bad, id=f"{'.'.join(path)}={bad}")
    for path, is_dict, bounded in FLOAT_KEYS
    for bad in (math.nan, math.inf, -math.inf, *((-1.0,) if bounded else ()))
]


def nested(path: tuple[str, ...], value: object) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[return-value]


def test_the_walk_sees_every_float_param():
    # Not vacuous: the keys the issue named, a dict of floats and a doubly nested one.
    paths = {".".join(p): (d, b) for p, d, b in FLOAT_KEYS}
    assert paths["judge.timeout_s"] == (False, True)
    assert paths["ppo.score_clip"] == (False, True)
    assert paths["ppo.missing_eos_penalty"] == (False, True)
    assert paths["reward.weights"] == (True, False)
    assert paths["reward.weights_end"] == (True, False)
    assert paths["reward.train.lr"] == (False, True)
    assert paths["eval.gates.min_reward_gain"] == (False, False)
    assert len(paths) >= 40


@pytest.mark.parametrize(("path", "is_dict", "bad"), CASES)
def test_every_float_param_rejects_nan_inf_and_negatives(path, is_dict, bad):
    key = ".".join(path) + (".judge" if is_dict else "")
    with pytest.raises(ConfigError) as info:
        parse_params(nested(path, {"judge": bad} if is_dict else bad))
    text = str(info.value)
    assert "\n" not in text
    if math.isfinite(bad):
        assert text.startswith(f"params.yaml: {key}: Input should be greater than"), text
    else:
        assert text == f"params.yaml: {key}: expected a finite number, got {bad!r}"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        # The cases, as a user writes them in YAML.
        ("judge: {timeout_s: .inf}", "judge.timeout_s: expected a finite number, got inf"),
        ("judge: {timeout_s: 1.0e+300}", "judge.timeout_s: Input should be less than or equal"),
        ("ppo: {score_clip: -1.0}", "ppo.score_clip: Input should be greater than 0"),
        ("ppo: {missing_eos_penalty: -0.5}", "ppo.missing_eos_penalty: Input should be greater"),
        ("reward: {weights: {judge: .nan}}", "reward.weights.judge: expected a finite number"),
    ],
)
def test_cli_exits_2_with_one_line(tmp_path: Path, yaml_text: str, message: str):
    params = tmp_path / "params.yaml"
    params.write_text(yaml_text + "\n")
    result = CliRunner().invoke(app, ["score_with_llm", "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output


def test_non_utf8_params_file_is_one_line(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_bytes(b"ppo:\n  clip: 0.2\n  # caf\xe9 (latin-1)\n")
    result = CliRunner().invoke(app, ["score_with_llm", "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {params}:3: not valid UTF-8 (byte 0xe9 at offset 24)\n"


def test_finite_values_still_load():
    params = parse_params(yaml.safe_load("ppo: {score_clip: null, missing_eos_penalty: 0.0}"))
    assert params.ppo.score_clip is None and params.ppo.missing_eos_penalty == 0.0
    assert parse_params({"reward": {"weights": {"judge": -0.5}}}).reward.weights == {"judge": -0.5}
