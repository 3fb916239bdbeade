"""Paths once: a stage module names the pipeline paths it reads and writes (module-level
``Path("...")`` constants), and ``dvc.yaml`` must agree with it, both ways.

- every such constant of ``stages/<name>.py`` is an out, metric, plot or dep of stage
  ``<name>`` (or lies under one): a path renamed in the module but not in ``dvc.yaml`` fails;
- every out, metric and plot of the stage is one of those constants, the full metrics file
  derived from one (``headline.full_path``), or, for ``track_inputs``, a fingerprint file of
  ``inputs.FILES``: an output ``dvc.yaml`` declares that the stage no longer writes fails.

The code deps are checked by ``tests/test_dvc_deps.py``.
"""

from __future__ import annotations

import ast
from pathlib import PurePosixPath

import pytest
import yaml

from rlhf_lab import inputs
from rlhf_lab.headline import full_path
from rlhf_lab.outputs import OUTPUT_KINDS, declared_paths, holds

from .conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
ROOTS = ("data", "models", "metrics", "plots", "reports")
"""The folders `dvc repro` writes (docs/layout.md)."""


def module_paths(stage: str) -> dict[str, PurePosixPath]:
    """The module-level ``NAME = Path("data/...")`` constants of the stage's module."""
    tree = ast.parse((REPO / "src/rlhf_lab/stages" / f"{stage}.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        value = node.value
        if not (
            isinstance(value, ast.Call)
            and getattr(value.func, "id", None) == "Path"
            and value.args
            and isinstance(value.args[0], ast.Constant)
            and isinstance(value.args[0].value, str)
        ):
            continue
        path = PurePosixPath(value.args[0].value)
        if path.parts and path.parts[0] in ROOTS:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            found[target.id] = path
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_module_paths_are_declared_for_their_stage(stage):
    spec = STAGES[stage]
    declared = declared_paths(spec, (*OUTPUT_KINDS, "deps"))
    missing = {n: str(p) for n, p in module_paths(stage).items() if not holds(p, declared)}
    assert not missing, f"dvc.yaml stage {stage} does not declare {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_declared_outputs_are_written_by_the_stage(stage):
    named = list(module_paths(stage).values())
    derived = [PurePosixPath(full_path(p).as_posix()) for p in named if p.parts[0] == "metrics"]
    if stage == "track_inputs":
        derived += [PurePosixPath((inputs.INPUTS_DIR / f).as_posix()) for f in inputs.FILES]
    known = named + derived
    stray = [
        str(out)
        for out in declared_paths(STAGES[stage])
        if not any(out == p or p in out.parents or out in p.parents for p in known)
    ]
    assert not stray, f"dvc.yaml stage {stage} declares outputs its module never names: {stray}"


def test_the_checks_read_what_a_stage_module_names_and_bite():
    assert module_paths("train_sft")["OUT_DIR"] == PurePosixPath("models/sft")
    assert module_paths("train_sft")["METRICS"] == PurePosixPath("metrics/train_sft.json")
    spec = {"outs": ["models/sft"], "deps": ["data/preference"]}
    assert holds(PurePosixPath("models/sft/adapter"), declared_paths(spec, ("outs",)))
    # a path renamed in the module only (models/sft2) is reported
    assert not holds(PurePosixPath("models/sft2"), declared_paths(spec, ("outs", "deps")))
