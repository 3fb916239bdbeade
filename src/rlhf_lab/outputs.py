"""Which DVC stage makes a pipeline output: the hint a command gives when one is missing.

A fresh clone has the code, params, metrics and plots (git) but not the DVC-cached outputs
(``models/``, ``data/``, ``reports/``): ``dvc pull`` fetches them from the team's DVC remote,
``dvc repro <stage>`` makes them (with every stage before it). The stage is read from
``dvc.yaml``, so the hint can never name a stage that no longer makes the file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

DVC_YAML = Path("dvc.yaml")


OUTPUT_KINDS = ("outs", "metrics", "plots")
"""The keys of a dvc.yaml stage that list what it writes."""


def declared_paths(stage: dict, kinds: tuple[str, ...] = OUTPUT_KINDS) -> list[PurePosixPath]:
    """The paths a dvc.yaml ``stage`` lists under ``kinds`` (an entry is a path or
    ``{path: options}``)."""
    return [
        PurePosixPath(next(iter(entry)) if isinstance(entry, dict) else entry)
        for kind in kinds
        for entry in stage.get(kind) or []
    ]


def holds(path: PurePosixPath, folders: list[PurePosixPath]) -> bool:
    """Whether ``path`` is one of ``folders`` or lies under one."""
    return any(path == f or f in path.parents for f in folders)


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
        if holds(target, declared_paths(stage)):
            return name
    return None


def how_to_get(path: str | Path) -> str:
    """``"`dvc pull` fetches it, or `dvc repro train_ppo` makes it"`` for a pipeline output;
    a generic hint for anything else."""
    stage = stage_of(path)
    if stage is None:
        return "give a path that exists"
    return f"`dvc pull` fetches it from the DVC remote, or `dvc repro {stage}` makes it"
