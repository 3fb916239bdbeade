"""dvc.yaml's deps are exactly what each stage runs: every project module a stage imports.

A stage whose code changed must rerun, so ``dvc.yaml`` has to list (a file or a folder
holding) every ``rlhf_lab`` module the stage can import, directly or through other modules,
lazily inside functions included (example-get-started: a stage's deps are what it runs).
The walk uses ``ast`` only: no torch import, seconds to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

SRC = REPO / "src"
PACKAGE = "rlhf_lab"


def _module_file(name: str) -> Path | None:
    """The source file of ``rlhf_lab...`` module ``name`` (a package's __init__), or None."""
    base = SRC / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


CLI_RUNS = {"_run"}
"""What ``rlhf-lab <stage>`` executes of the CLI module besides its top level: other
subcommands' lazy imports (``params --preset``) are not part of a stage."""


def _imported(path: Path, module: str) -> set[str]:
    """``rlhf_lab`` modules imported anywhere in ``path`` (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if module == f"{PACKAGE}.cli":
        tree.body = [
            n
            for n in tree.body
            if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) or n.name in CLI_RUNS
        ]
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in node.body
        for n in ast.walk(child)
    }
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != PACKAGE:
                continue
            out.add(base)
            # `from rlhf_lab.evaluation import stats` imports the submodule stats
            out |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    return out


def import_closure(module: str) -> set[Path]:
    """Files of every project module ``module`` can import (itself and parents included)."""
    seen: set[str] = set()
    todo = [module]
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        todo += sorted(_imported(path, name))
    return files


CODE_DEP_PATHS = 35
"""Budget for the distinct ``src/`` paths across dvc.yaml (each is a column of ``dvc exp show``):
one module per stage, the packages as directories and the top-level modules. Per-file deps
were 70 paths."""


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def needed_files(stage: str) -> set[Path]:
    """What `rlhf-lab <stage>` runs: the CLI module, then the stage module."""
    return import_closure(f"{PACKAGE}.cli") | import_closure(f"{PACKAGE}.stages.{stage}")


def missing_deps(stage: str, spec: dict) -> list[str]:
    """Project modules ``stage`` imports that no file or directory in its deps holds."""
    deps = [REPO / d for d in spec.get("deps", [])]
    return sorted(
        str(f.relative_to(REPO))
        for f in needed_files(stage)
        if not any(f == d or d in f.parents for d in deps)
    )


def _code_deps(spec: dict) -> list[str]:
    return [d for d in spec.get("deps", []) if d.startswith("src/")]


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_deps_cover_every_module_it_imports(stage):
    spec = _stages()[stage]
    assert spec["cmd"].split()[:2] == ["rlhf-lab", stage], "one name per stage everywhere"
    missing = missing_deps(stage, spec)
    assert not missing, f"dvc.yaml: stage {stage} imports modules its deps miss: {missing}"


def expected_code_deps(stage: str) -> list[str]:
    """The ``src/`` deps ``stage`` should declare, in dvc.yaml's order: its own stage module (a
    stage's edit reruns that stage only), then every package it imports as a directory (a file
    moved between packages needs no edit), then the top-level modules it imports."""
    rel = [f.relative_to(SRC / PACKAGE) for f in needed_files(stage)]
    packages = sorted({r.parts[0] for r in rel if len(r.parts) > 1 and r.parts[0] != "stages"})
    top = sorted(r.name for r in rel if len(r.parts) == 1)
    base = f"src/{PACKAGE}"
    return [
        f"{base}/stages/{stage}.py",
        f"{base}/stages/__init__.py",
        *(f"{base}/{p}" for p in packages),
        *(f"{base}/{t}" for t in top),
    ]


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_code_deps_are_its_module_packages_and_top_level_modules(stage):
    """Exactly the shape above: nothing missing, nothing the stage never runs, no single file
    inside a package. On a failure (a merge, a new import) paste the printed lines."""
    expected = expected_code_deps(stage)
    lines = "\n".join(f"      - {d}" for d in expected)
    assert _code_deps(_stages()[stage]) == expected, f"dvc.yaml {stage} deps, src/ part:\n{lines}"


def test_code_deps_fit_their_column_budget():
    paths = {d for spec in _stages().values() for d in _code_deps(spec)}
    assert len(paths) <= CODE_DEP_PATHS, sorted(paths)
    assert f"src/{PACKAGE}/ppo" in paths and f"src/{PACKAGE}/tasks" in paths


def test_a_missing_package_or_module_is_reported():
    spec = _stages()["train_ppo"]
    assert not missing_deps("train_ppo", spec)
    without = [d for d in spec["deps"] if d not in {f"src/{PACKAGE}/ppo", f"src/{PACKAGE}/io.py"}]
    missing = missing_deps("train_ppo", {**spec, "deps": without})
    assert f"src/{PACKAGE}/io.py" in missing
    assert {f"src/{PACKAGE}/ppo/trainer.py", f"src/{PACKAGE}/ppo/core.py"} <= set(missing)
    assert not any(m.startswith(f"src/{PACKAGE}/tasks/") for m in missing)


def test_the_walk_follows_lazy_and_relative_imports():
    files = {str(f.relative_to(SRC)) for f in import_closure(f"{PACKAGE}.stages.train_ppo")}
    # lazy, inside a function: the judge is built only when its reward weight is non-zero
    assert "rlhf_lab/judge/scorer.py" in files
    # through another module: reward_components -> tasks
    assert {"rlhf_lab/reward_components.py", "rlhf_lab/tasks/crs/__init__.py"} <= files
    assert "rlhf_lab/__init__.py" in files
