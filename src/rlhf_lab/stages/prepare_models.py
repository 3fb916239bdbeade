"""prepare_models: materialise the base policy and the encoder as plain model directories.

    rlhf-lab prepare_models --params params.yaml

Reads ``models``; writes ``models/base/policy`` and ``models/base/encoder`` (safetensors,
tokenizer and ``provenance.json``) from the embedded defaults, a local directory or a hub id.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_lab import models, ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.io import atomic_dir, stage_outputs

POLICY_DIR = Path("models/base/policy")
ENCODER_DIR = Path("models/base/encoder")


def main(params: Params) -> None:
    cfg = params.models
    provenance = {"stage": "prepare_models", "params": section_dict(params, "models")}
    with stage_outputs(POLICY_DIR, ENCODER_DIR):
        with atomic_dir(POLICY_DIR) as tmp:
            policy = models.materialise_policy(
                cfg.policy, tmp, cfg.dtype, cfg.revision, **provenance
            )
        with atomic_dir(ENCODER_DIR) as tmp:
            encoder = models.materialise_encoder(cfg.encoder, tmp, cfg.revision, **provenance)
    ui.summary(
        "prepare_models",
        {
            "policy": f"{cfg.policy} → {POLICY_DIR}",
            "policy parameters": f"{policy['parameters']:,}",
            "policy dtype": policy["dtype"],
            "pad / eos": f"{policy['pad_token']} / {policy['eos_token']}",
            "encoder": f"{cfg.encoder} → {ENCODER_DIR}",
            "encoder parameters": f"{encoder['parameters']:,}",
        },
    )
