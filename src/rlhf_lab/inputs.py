"""Fingerprints of the inputs that params name outside the pipeline (what ``track_inputs`` writes).

``data.source``, ``data.catalogue``, ``models.policy`` / ``models.encoder`` and a local judge
are *paths in params*: DVC compares the path string, never the bytes behind it, so editing the
file leaves ``dvc status`` clean and the next ``dvc repro`` reuses stale outputs. DVC's pattern
for inputs it cannot hash itself is an always-changed stage that writes a small fingerprint
file, which the stages that read the input depend on: the file is byte-identical while the input
is, so those stages are skipped as usual, and they rerun exactly when its bytes change.

One file per concern (:data:`FILES`), each ``{param key: entry}``. An entry records the value as
written and what it resolves to:

* a local file: its sha256; a local directory: :func:`rlhf_lab.io.dir_digest` (relative names
  and file sha256s);
* an embedded name (``embedded:...``, ``chitchat``): the wheel's package name and version;
* a hub id: the id and the pinned revision (``models.revision``; no network: what a branch
  resolved to is in each model's ``provenance.json``);
* a path that a ``dvc.yaml`` stage writes (the default judge, ``models/base/policy``): only the
  value, since DVC already hashes it as that stage's output, and hashing it here would see the
  previous run's copy before its stage rewrites it.

Nothing machine-specific goes in (no absolute path, time or host): DVC hashes these files, and a
clone elsewhere must find them unchanged. Re-reading a multi-GB model directory on every repro
would cost minutes, so file sha256s are cached by (path, size, mtime_ns) in
:data:`DIGEST_CACHE`, outside git and DVC, as git's index does for ``git status``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from rlhf_lab import models
from rlhf_lab.config import DataConfig, JudgeConfig, Params
from rlhf_lab.data.readers import local_files
from rlhf_lab.errors import DataError, ModelSourceError
from rlhf_lab.io import dir_digest, sha256_file, write_json

INPUTS_DIR = Path("data/inputs")
FILES = ("models.json", "source.json", "catalogue.json", "judge.json")
"""The fingerprint files in :data:`INPUTS_DIR` (the ``track_inputs`` outputs in dvc.yaml)."""
DIGEST_CACHE = Path(".rlhf-lab/input-digests.json")
"""Per-machine cache of file sha256s (gitignored, dvcignored); safe to delete."""
CHITCHAT_PACKAGE = "chitchat-dataset"
"""The wheel ``data.source: chitchat`` reads."""

FileSha = Callable[[Path], str]
Entry = dict[str, Any]


class DigestCache:
    """``sha256_file`` answered from a JSON cache while a file's size and mtime_ns are unchanged.

    Keys are absolute paths: the cache is this machine's and never hashed. Only entries used in
    this run are saved, so it stays the size of the current inputs.
    """

    def __init__(self, path: Path = DIGEST_CACHE) -> None:
        self.path = path
        try:
            self._old: dict[str, list[Any]] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._old = {}  # no cache yet, or a torn one: hashing again is always correct
        self._used: dict[str, list[Any]] = {}

    def sha256(self, file: Path) -> str:
        key = os.path.abspath(file)
        st = file.stat()
        hit = self._old.get(key)
        if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            digest = str(hit[2])
        else:
            digest = sha256_file(file)
        self._used[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self._used)


def pipeline_outputs(dvc_yaml: Path) -> list[str]:
    """Every ``outs`` path of ``dvc_yaml``'s stages (empty when there is no dvc.yaml)."""
    if not dvc_yaml.is_file():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    outs: list[str] = []
    for spec in stages.values():
        for out in spec.get("outs") or ():
            outs.append(next(iter(out)) if isinstance(out, dict) else str(out))
    return outs


def is_pipeline_output(value: str, outs: Iterable[str]) -> bool:
    """Whether ``value`` names a path at or under a pipeline output (relative to the repo)."""
    if os.path.isabs(os.path.expanduser(value)):
        return False
    norm = Path(os.path.normpath(value)).as_posix()
    return any(norm == o or norm.startswith(f"{o.rstrip('/')}/") for o in outs)


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None  # the stage that reads it says how to install it


def file_entry(value: str, path: Path, file_sha: FileSha = sha256_file) -> Entry:
    return {"value": value, "kind": "local_file", "sha256": file_sha(path)}


def dir_entry(
    value: str, path: Path, file_sha: FileSha = sha256_file, files: Iterable[Path] | None = None
) -> Entry:
    return {"value": value, "kind": "local_dir", "sha256": dir_digest(path, file_sha, files)}


def embedded_entry(value: str, dist: str) -> Entry:
    return {"value": value, "kind": "embedded", "package": dist, "version": _package_version(dist)}


def hub_entry(value: str, revision: str | None) -> Entry:
    return {"value": value, "kind": "hub", "revision": revision}


def model_entry(
    key: str, spec: str, revision: str | None, file_sha: FileSha = sha256_file
) -> Entry:
    """A model source (``models.policy``...) resolved as :func:`rlhf_lab.models.resolve_source`
    does; a source it cannot resolve (a missing local path) is a one-line error naming ``key``."""
    try:
        source = models.resolve_source(spec, revision)
    except ModelSourceError as exc:
        raise DataError(f"params.yaml: {key}: {exc}") from None
    if source.kind == "embedded":
        return embedded_entry(spec, models.EMBEDDED[spec].package.replace("_", "-"))
    if source.kind == "hub":
        return hub_entry(spec, revision)
    local = Path(spec).expanduser()
    return (
        file_entry(spec, local, file_sha) if local.is_file() else dir_entry(spec, local, file_sha)
    )


def source_entry(cfg: DataConfig, file_sha: FileSha = sha256_file) -> Entry:
    """``data.source``: the embedded chats, local data files (only those it reads) or a hub id."""
    if cfg.source == "chitchat":
        return embedded_entry(cfg.source, CHITCHAT_PACKAGE)
    files = local_files(cfg.source)  # a DataError naming data.source when a local path is missing
    if files is None:
        # DataConfig has no dataset revision yet: the id is all that pins a hub dataset.
        return hub_entry(cfg.source, None)
    path = Path(cfg.source).expanduser()
    if path.is_file():
        return file_entry(cfg.source, path, file_sha)
    return dir_entry(cfg.source, path, file_sha, files)


def catalogue_entry(value: str | None, file_sha: FileSha = sha256_file) -> Entry:
    """``data.catalogue``: unset, or a local CSV file."""
    if value is None:
        return {"value": None}
    path = Path(value).expanduser()
    if not path.is_file():
        raise DataError(f"params.yaml: data.catalogue: {value!r} is not a file ({path.resolve()})")
    return file_entry(value, path, file_sha)


def judge_entry(cfg: JudgeConfig, outs: Iterable[str], file_sha: FileSha = sha256_file) -> Entry:
    """``judge.model``: a served name (openai), unused (none), a pipeline output, or a source."""
    if cfg.backend != "local":
        return {"value": cfg.model, "kind": "served" if cfg.backend == "openai" else "unused"}
    if is_pipeline_output(cfg.model, outs):
        return {"value": cfg.model, "kind": "pipeline_output"}
    # The local judge loads judge.model without a revision (models.as_source).
    return model_entry("judge.model", cfg.model, None, file_sha)


def fingerprints(
    params: Params, outs: Iterable[str], file_sha: FileSha = sha256_file
) -> dict[str, dict[str, Any]]:
    """The contents of each of :data:`FILES`, keyed by file name."""
    m, d = params.models, params.data
    return {
        "models.json": {
            "models.policy": model_entry("models.policy", m.policy, m.revision, file_sha),
            "models.encoder": model_entry("models.encoder", m.encoder, m.revision, file_sha),
        },
        "source.json": {
            "data.source": source_entry(d, file_sha),
            "data.format": d.format,
            "data.data_dir": d.data_dir,
            "data.split": d.split,
        },
        "catalogue.json": {"data.catalogue": catalogue_entry(d.catalogue, file_sha)},
        "judge.json": {"judge.model": judge_entry(params.judge, list(outs), file_sha)},
    }
