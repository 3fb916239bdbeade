"""dvc.yaml's plots: each curve declared once, with a title and axis labels, and
``dvc plots show`` of the committed run renders every one of them without an error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import yaml

from .conftest import REPO


def _declared() -> list[dict[str, Any]]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]


def _files(spec: dict[str, Any]) -> list[str]:
    """The data files a top-level plot reads (its id when it names no ``y`` files)."""
    ((name, props),) = spec.items() if isinstance(spec, dict) else ((spec, None),)
    y = (props or {}).get("y")
    return list(y) if isinstance(y, dict) else [name]


def assert_plots_once(shown: dict[str, Any], dvc_yaml: dict[str, Any]) -> None:
    """``dvc plots show --json`` output: no file in two plots, no stage-level plot, no
    dvclive ``metrics.json`` among them."""
    files = [f for spec in dvc_yaml["plots"] for f in _files(spec)]
    assert [f for f, n in Counter(files).items() if n > 1] == []
    assert not any("plots" in stage for stage in dvc_yaml["stages"].values())
    assert not any(k.startswith("dvc.yaml::") or k.endswith("metrics.json") for k in shown["data"])


def test_curves_are_declared_once_with_titles_and_labels():
    for spec in _declared():
        if not isinstance(spec, dict):
            continue  # an image: it carries its own title and labels
        ((name, props),) = spec.items()
        if isinstance(props.get("y"), dict):  # the training curves
            assert props["title"] and props["x_label"] and props["y_label"], name
            assert props["x"] == "step", name
    files = [f for spec in _declared() for f in _files(spec)]
    assert [f for f, n in Counter(files).items() if n > 1] == []
    # train and valid of one quantity share a plot
    sft = next(s["train_sft/loss"] for s in _declared() if "train_sft/loss" in s)
    assert [f.split("/metrics/")[1] for f in sft["y"]] == ["train/loss.tsv", "valid/loss.tsv"]
    # PPO's per-step signals are smoothed (DVC's smooth template keeps the raw line beside)
    ppo = [next(iter(s.values())) for s in _declared() if next(iter(s)).startswith("train_ppo/")]
    assert ppo and all(p["template"] == "smooth" for p in ppo)


def test_plots_show_of_the_committed_run_has_no_error(tmp_path):
    out = subprocess.run(
        # -o: DVC copies the images there, not into the repo's dvc_plots/
        [sys.executable, "-m", "dvc", "plots", "show", "--json", "-o", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert not shown.get("errors"), shown["errors"]
    assert_plots_once(shown, yaml.safe_load((REPO / "dvc.yaml").read_text()))
    # one entry per curve declared, and one per file of a declared folder
    declared = {next(iter(s)) if isinstance(s, dict) else s for s in _declared()}
    curves = {k for k in shown["data"] if not k.startswith("plots/evaluate/")}
    assert curves == {d for d in declared if not d.startswith("plots/evaluate/")}
