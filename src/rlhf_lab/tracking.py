"""Training curves sent to the trackers people already use, besides DVC's dvclive.

``tracking.log_with`` in ``params.yaml`` names them; ``rlhf-lab <stage>`` calls
:func:`configure` once, the two places that log curves (``training.common.Curves`` for the
supervised loops, the PPO trainer's step loop) call :func:`log` next to dvclive, and the CLI
calls :func:`close` when the stage ends. Each stage is one run:

- ``tensorboard``: event files in ``<tracking.dir>/<stage>/`` (``tensorboard --logdir runs``),
  written with ``torch.utils.tensorboard.SummaryWriter``;
- ``mlflow``: a run named after the stage in experiment ``tracking.project`` at
  ``tracking.mlflow_uri`` (a local file store by default; ``mlflow ui`` reads it);
- ``wandb``: ``wandb.init(project=tracking.project, name=stage)``; ``WANDB_MODE=offline``
  keeps it local (``wandb sync`` uploads later).

Each library is imported only when named (``pip install -e '.[tracking]'`` installs
TensorBoard and MLflow; wandb is ``pip install wandb``). A tracker that cannot start is a
one-line error before any training. Only the main process logs (the callers already are).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError

_sinks: list[Any] = []
_stage: str | None = None
_settings: Any = None


class _TensorBoard:
    def __init__(self, settings: Any, stage: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(settings.dir) / stage))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, settings: Any, stage: str) -> None:
        import mlflow

        if settings.mlflow_uri.startswith("file:"):
            # MLflow 3 keeps the local file store in maintenance mode behind this opt-in; it
            # is the backend that needs no database or server (`mlflow ui` reads it)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(settings.mlflow_uri)
        mlflow.set_experiment(settings.project)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=stage)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _Wandb:
    def __init__(self, settings: Any, stage: str) -> None:
        import wandb

        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, name=stage, dir=settings.dir)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


_KINDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


def configure(settings: Any, stage: str) -> None:
    """Remember ``params.tracking`` for ``stage``; the trackers open on the first :func:`log`
    (a stage that logs no curve opens no run). Checks now that each library imports."""
    global _stage, _settings
    close()
    _stage, _settings = stage, settings
    for kind in settings.log_with:
        if kind in _KINDS:
            module = "torch.utils.tensorboard" if kind == "tensorboard" else kind
            try:
                __import__(module)
            except ImportError:
                raise ConfigError(
                    f"params.yaml: tracking.log_with names {kind}, which is not installed "
                    f"(pip install {_PACKAGES[kind]}, or pip install -e '.[tracking]')"
                ) from None


def log(step: int, values: Mapping[str, float]) -> None:
    """Send one step's finite values to every configured tracker besides dvclive."""
    if _settings is None or _stage is None:
        return
    if not _sinks:
        kinds = [k for k in _settings.log_with if k in _KINDS]
        _sinks.extend(_KINDS[k](_settings, _stage) for k in kinds)
    finite = {k: float(v) for k, v in values.items() if math.isfinite(float(v))}
    for sink in _sinks:
        sink.log(step, finite)


def close() -> None:
    """End every open run (idempotent)."""
    while _sinks:
        _sinks.pop().close()
