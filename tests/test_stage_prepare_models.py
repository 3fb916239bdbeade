"""prepare_models through the real CLI, on tiny random models."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app


def test_prepare_models_from_local_dirs(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "policy": str(tiny_models["policy"]),
                    "encoder": str(tiny_models["encoder"]),
                }
            }
        )
    )
    result = CliRunner().invoke(app, ["prepare_models", "--params", str(params)])
    assert result.exit_code == 0, result.output
    policy, encoder = tmp_path / "models/base/policy", tmp_path / "models/base/encoder"
    for d in (policy, encoder):
        assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    prov = json.loads((policy / "provenance.json").read_text())
    assert prov["stage"] == "prepare_models"
    assert prov["params"]["models"]["policy"] == str(tiny_models["policy"])
    assert prov["pad_token"] != prov["eos_token"]
    # The saved policy reloads with the same weights and generates.
    tok = models.load_tokenizer(policy)
    model = models.load_causal_lm(policy)
    batch = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]
    assert json.loads((encoder / "provenance.json").read_text())["num_layers"] == 2
    # nothing half-written is left behind
    assert not [p for p in (tmp_path / "models/base").iterdir() if p.name.startswith(".")]


def test_missing_source_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("models:\n  policy: ./missing-model\n")
    result = CliRunner().invoke(app, ["prepare_models", "--params", str(params)])
    assert result.exit_code == 2
    assert "'./missing-model' not found" in result.output
    assert not (tmp_path / "models/base/policy").exists()
