"""tracking.log_with: the curves a stage logs reach TensorBoard's event files, an MLflow file
store and a wandb offline run (all local), next to dvclive."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from rlhf_lab import tracking
from rlhf_lab.config import TrackingConfig, parse_params
from rlhf_lab.errors import ConfigError
from rlhf_lab.training.common import Curves


@pytest.fixture(autouse=True)
def _closed():
    yield
    tracking.close()
    tracking.configure(TrackingConfig(), "none")  # back to dvclive only


def test_tensorboard_event_files_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = TrackingConfig(log_with=["dvclive", "tensorboard"], dir=str(tmp_path / "runs"))
    tracking.configure(settings, "train_sft")
    curves = Curves(tmp_path / "plots/train_sft")  # the supervised loops' one logging place
    curves.log(1, {"train/loss": 2.5})
    curves.log(2, {"train/loss": 1.5, "valid/loss": float("nan")})
    curves.close()
    tracking.close()
    acc = EventAccumulator(str(tmp_path / "runs/train_sft"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"]  # the NaN was not sent
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
    # dvclive still wrote DVC's curve
    tsv = (tmp_path / "plots/train_sft/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["step", "loss"] and len(tsv) == 3


def test_mlflow_file_store_round_trip(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    settings = TrackingConfig(log_with=["dvclive", "mlflow"], mlflow_uri=uri, project="lab")
    tracking.configure(settings, "train_ppo")
    tracking.log(0, {"objective/score": 0.25, "objective/kl": 0.0})
    tracking.log(1, {"objective/score": 0.75, "objective/kl": 0.125})
    tracking.close()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lab").experiment_id])
    assert run.info.run_name == "train_ppo" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "objective/score")
    assert [(m.step, m.value) for m in history] == [(0, 0.25), (1, 0.75)]
    assert run.data.metrics == {"objective/score": 0.75, "objective/kl": 0.125}


def test_only_dvclive_opens_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.configure(TrackingConfig(), "train_sft")
    tracking.log(0, {"train/loss": 1.0})
    tracking.close()
    assert list(tmp_path.iterdir()) == []


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"tracking\.log_with.*must include dvclive"):
        parse_params({"tracking": {"log_with": ["tensorboard"]}})
    with pytest.raises(ConfigError, match=r"tracking\.log_with"):
        parse_params({"tracking": {"log_with": ["dvclive", "comet"]}})


def test_a_tracker_that_is_not_installed_is_a_one_line_error_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ConfigError, match=r"names wandb, which is not installed \(pip"):
        tracking.configure(TrackingConfig(log_with=["dvclive", "wandb"]), "train_ppo")


def _wandb_records(path):
    """The protobuf records of a ``.wandb`` run file. wandb 0.31 reads it only in its Go core,
    so this is the file's documented layout, LevelDB's log format: a 7-byte header (``:W&B``,
    magic, version), then 32 KiB blocks of chunks, each ``crc32 (4) | length (2, LE) | type
    (1: full, 2: first, 3: middle, 4: last)`` and its bytes; a block's tail under 7 bytes is
    padding."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []
        elif kind == 0:
            break


def test_wandb_offline_run_round_trip(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network: a local run file
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = TrackingConfig(log_with=["dvclive", "wandb"], dir=str(tmp_path / "runs"))
    tracking.configure(settings, "train_ppo")
    tracking.log(0, {"objective/score": 0.25, "objective/kl": 0.0})
    tracking.log(1, {"objective/score": 0.75, "objective/kl": float("nan")})
    tracking.close()
    (run_file,) = (tmp_path / "runs/wandb").glob("offline-run-*/run-*.wandb")
    history, names = [], []
    for raw in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            history.append(
                {k: v for k, v in items.items() if not k.startswith("_")}
                | {"_step": items["_step"]}
            )
        elif kind == "run":
            names.append((record.run.display_name, record.run.project))
    assert names and names[0] == ("train_ppo", settings.project)
    assert history == [  # the NaN was not sent
        {"objective/score": 0.25, "objective/kl": 0.0, "_step": 0},
        {"objective/score": 0.75, "_step": 1},
    ]
