"""track_inputs: fingerprint the inputs that params name outside the pipeline.

    rlhf-lab track_inputs --params params.yaml

Reads ``models.policy`` / ``encoder`` / ``revision``, ``data.source`` / ``format`` /
``data_dir`` / ``split``, ``data.catalogue`` and ``judge.backend`` / ``model``; writes
``data/inputs/{models,source,catalogue,judge}.json``, which the stages that read those inputs
depend on (docs/inputs.md; :mod:`rlhf_lab.inputs`). ``always_changed`` in
dvc.yaml: it runs on every ``dvc repro`` (about a second while the inputs are unchanged).
"""

from __future__ import annotations

from pathlib import Path

from rlhf_lab import inputs, ui
from rlhf_lab.config import Params
from rlhf_lab.io import stage_outputs, write_json


def main(params: Params) -> None:
    cache = inputs.DigestCache()
    found = inputs.fingerprints(params, inputs.pipeline_outputs(Path("dvc.yaml")), cache.sha256)
    inputs.INPUTS_DIR.mkdir(parents=True, exist_ok=True)
    with stage_outputs(*(inputs.INPUTS_DIR / name for name in found)):
        for name, data in found.items():
            write_json(inputs.INPUTS_DIR / name, data)
    cache.save()
    ui.summary(
        "track_inputs",
        {
            f"{key} ({entry.get('kind', 'unset')})": _shown(entry)
            for data in found.values()
            for key, entry in data.items()
            if isinstance(entry, dict)
        },
    )


def _shown(entry: dict) -> str:
    """What pins an input, short: a digest's first 12 hex digits, a version or a revision."""
    if entry.get("sha256"):
        return str(entry["sha256"])[:12]
    return str(entry.get("version") or entry.get("revision") or "-")
