"""The architecture is checked by tools, under ``make test`` as under ``make lint``.

``lint-imports`` checks the layers contract in pyproject.toml (``[tool.importlinter]``: a module
imports only from its own layer or a lower one), and ``deptry src`` the runtime dependencies
(none unused, none missing, none imported only through another package). Each runs on the
real tree and, to show the check has teeth, on a copy with one back-arrow or one unused
dependency added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    # The tree under test comes first on the path (not an installed copy of the package).
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(BIN / "lint-imports"), "--no-cache", "--no-logo"], cwd, src)


def _deptry(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "deptry", "--no-ansi", str(src)], cwd, src)


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_layers_contract_is_kept():
    out = _lint_imports(REPO, REPO / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout


def test_layers_contract_catches_a_back_arrow(tmp_path):
    root = _copy_tree(tmp_path)
    rows = root / "src/rlhf_lab/data/rows.py"
    rows.write_text(rows.read_text() + "\nfrom rlhf_lab.tasks import crs  # noqa\n")
    out = _lint_imports(root, root / "src")
    assert out.returncode == 1
    assert "rlhf_lab.data is not allowed to import rlhf_lab.tasks" in out.stdout
    assert "rlhf_lab.data.rows -> rlhf_lab.tasks.crs" in out.stdout


def test_deptry_finds_no_dependency_issue():
    out = _deptry(REPO, REPO / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No dependency issues found" in out.stdout + out.stderr


def test_deptry_catches_an_unused_runtime_dependency(tmp_path):
    root = _copy_tree(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('    "torch==', '    "trl>=1.13",\n    "torch==', 1))
    out = _deptry(root, root / "src")
    assert out.returncode == 1
    assert "DEP002 'trl' defined as a dependency but not used" in out.stdout + out.stderr
