"""Which DVC stage makes a pipeline output: the hint a command gives when one is missing.

A fresh clone has the code, params, metrics and plots (git) but not the DVC-cached outputs
(``models/``, ``data/``, ``reports/``): ``dvc pull`` fetches them from the team's DVC remote,
``dvc repro <stage>`` makes them (with every stage before it). The stage is read from
``dvc.yaml``, so the hint can never name a stage that no longer makes the file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

DVC_YAML = Path("dvc.yaml")


def stage_of(path: str | Path, dvc_yaml: str | Path = DVC_YAML) -> str | None:
    """The stage whose ``outs`` / ``metrics`` / ``plots`` hold ``path`` (or a folder above
    it), or None (no dvc.yaml, or no stage makes it)."""
    import yaml

    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    target = PurePosixPath(Path(path).as_posix())
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                out_path = PurePosixPath(next(iter(out)) if isinstance(out, dict) else out)
                if target == out_path or out_path in target.parents:
                    return name
    return None


def how_to_get(path: str | Path) -> str:
    """``"`dvc pull` fetches it, or `dvc repro train_ppo` makes it"`` for a pipeline output;
    a generic hint for anything else."""
    stage = stage_of(path)
    if stage is None:
        return "give a path that exists"
    return f"`dvc pull` fetches it from the DVC remote, or `dvc repro {stage}` makes it"
