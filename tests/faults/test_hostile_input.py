"""Hostile and careless input through the real CLI: a YAML alias bomb, duplicate keys, seeds
out of range, console markup and terminal escapes in params, huge values echoed, deeply nested
JSON, empty / blank / UTF-16 / ``[]`` / scalar-only data files, a UTF-8 BOM, duplicate keys in
rows, a read-only output folder. Each is one literal line and exit 2 (or a counted row)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.config import MAX_YAML_NODES, SEED_MAX, Params, load_params
from rlhf_lab.errors import MAX_LINE_CHARS, ConfigError, clip, literal
from rlhf_lab.io import MAX_JSON_DEPTH, read_jsonl


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def one_line(code: int, out: str) -> str:
    assert code == 2, out
    assert out.startswith("error: ") and out.count("\n") == 1, out
    assert len(out) <= MAX_LINE_CHARS + 200 and "Traceback" not in out
    return out


# -- params.yaml ------------------------------------------------------------------------------


def bomb(levels: int) -> str:
    """Billion laughs: ``levels`` lines of 9 aliases to the line above (9**levels strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ntask: {{name: *l{levels - 1}}}\n"


def test_yaml_alias_bomb_fails_fast_in_one_line(workdir):
    text = bomb(9)  # 9**9 (387 million) strings once expanded
    assert len(text) < 500
    Path("params.yaml").write_text(text)
    out = one_line(*cli("prepare_models"))
    # the line where the expansion first passes the bound: l5 holds 9**6 strings
    assert f"params.yaml:6: YAML expands to over {MAX_YAML_NODES} values" in out
    # small enough to expand (9**4 = 6,561 strings): loads, and the echo is bounded
    Path("params.yaml").write_text(bomb(4))
    out = one_line(*cli("prepare_models"))
    assert "task.name: " in out and len(out) < 600


def test_recursive_and_deeply_nested_yaml_are_one_line(workdir):
    Path("params.yaml").write_text("task: &a {name: [*a]}\n")
    assert "YAML alias refers to a value that holds it" in one_line(*cli("prepare_models"))
    Path("params.yaml").write_text("task: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert "invalid YAML (nested too deeply)" in one_line(*cli("prepare_models"))


def test_duplicate_params_key_names_the_key_and_line(workdir):
    Path("p.yaml").write_text("ppo:\n  lr: 1.0e-4\n  clip: 0.2\n  lr: 1.0\n")
    out = one_line(*cli("prepare_models", "--params", "p.yaml"))
    assert "p.yaml:4: invalid YAML (duplicate key 'lr')" in out
    # a merge key may be overridden by the keys beside it: that is not a duplicate
    merged = "x: &b {lr: 1.0e-4, clip: 0.3}\nppo:\n  <<: *b\n  lr: 2.0e-4\n"
    Path("p.yaml").write_text(merged)
    with pytest.raises(ConfigError, match="x: unknown key"):
        load_params("p.yaml")


def seed_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += seed_keys(field.annotation, (*prefix, name))
        elif name == "seed":
            out.append((*prefix, name))
    return out


SEEDS = seed_keys(Params)


def nested(path: tuple[str, ...], value: object) -> dict:
    return {path[0]: nested(path[1:], value)} if len(path) > 1 else {path[0]: value}


def test_the_walk_sees_every_seed():
    assert {".".join(p) for p in SEEDS} >= {"data.seed", "ppo.seed", "reward.train.seed"}


@pytest.mark.parametrize("path", SEEDS, ids=[".".join(p) for p in SEEDS])
def test_every_seed_is_checked_against_the_range_torch_takes(workdir, path):
    for bad in (-1, SEED_MAX + 1, 10**30):
        Path("params.yaml").write_text(yaml.safe_dump(nested(path, bad)))
        out = one_line(*cli("prepare_models"))
        expect = f"params.yaml: {'.'.join(path)}: a seed is an integer from 0 to {SEED_MAX} (got"
        assert expect in out
    Path("params.yaml").write_text(yaml.safe_dump(nested(path, SEED_MAX)))
    load_params("params.yaml")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('"[/]": 1\n', "params.yaml: [/]: unknown key"),  # a MarkupError traceback before
        ('"[bold]x[/bold]": 1\n', "params.yaml: [bold]x[/bold]: unknown key"),
        ('task: {name: "[red]chat[/red]"}\n', "got '[red]chat[/red]'"),
        ('"a\\nb\\x1b[2J\\u202e": 1\n', "params.yaml: a\\nb\\x1b[2J\\u202e: unknown key"),
        ('task: {name: "evil\\r\\nerror: fake"}\n', "'evil\\r\\nerror: fake'"),
    ],
)
def test_params_text_prints_literally_on_one_line(workdir, text, shown):
    Path("params.yaml").write_text(text)
    out = one_line(*cli("prepare_models"))
    assert shown in out, out
    assert "\x1b" not in out and "\u202e" not in out


def test_a_huge_value_is_echoed_bounded(workdir):
    Path("params.yaml").write_text(yaml.safe_dump({"task": {"name": "x" * 1_000_000}}))
    out = one_line(*cli("prepare_models"))
    assert "task.name: " in out and len(out) < 600


def test_clip_and_literal():
    assert clip("a" * 10, 5) == "'aaaa… (7 more characters)"
    assert clip([[0] * 10**6] * 10**6).endswith("more characters)")  # fast: reprlib bounds it
    assert literal("ok\n\x1b[31m\ud800") == "ok\\n\\x1b[31m\\ud800"


# -- data files -------------------------------------------------------------------------------


def data_params(name: str, source: str, **data) -> None:
    Path(name).write_text(yaml.safe_dump({"data": {"source": source, **data}}))


def pref(i: int) -> dict:
    return {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"}


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
        ("blank.jsonl", b"\n  \n\r\n", "blank.jsonl: the file holds only blank lines"),
        ("arr.json", b" [ ] ", "arr.json: the file is an empty JSON array"),
        ("scalars.jsonl", b'1\n"x"\nnull\n', "scalars.jsonl: no row is a JSON object (first: "),
        ("u16.jsonl", json.dumps(pref(0)).encode("utf-16"), "u16.jsonl: the file is UTF-16 LE"),
        ("u16.json", json.dumps([pref(0)]).encode("utf-16-be").join([b"\xfe\xff", b""]), "BE"),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "preference"])
def test_unusable_data_file_says_what_is_wrong_with_the_data(workdir, name, data, message, fmt):
    Path(name).write_bytes(data)
    data_params("other.yaml", name, format=fmt)
    out = one_line(*cli("prepare_preference", "--params", "other.yaml"))
    if fmt == "preference" and name == "scalars.jsonl":
        message = "invalid"  # an explicit format reads them as rows: too many invalid ones
    assert message in out and "params.yaml" not in out and "cannot infer" not in out


def test_other_params_file_is_the_one_named(workdir):
    Path("rows.jsonl").write_text(json.dumps(pref(0)) + "\n")
    data_params("other.yaml", "rows.jsonl", format="chitchat")
    out = one_line(*cli("prepare_preference", "--params", "other.yaml"))
    assert out.startswith("error: other.yaml: data.format 'chitchat'") and "params.yaml" not in out


def test_bom_first_row_reads_and_duplicate_keys_in_rows_are_counted(workdir):
    lines = [json.dumps(pref(i)) for i in range(10)]
    lines[4] = lines[4][:-1] + ', "chosen": "another answer"}'
    Path("rows.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    items = [json.dumps(pref(i)) for i in range(10)]
    items[7] = items[7][:-1] + ', "meta": {"a": 1, "a": 2}}'
    Path("rows.json").write_text("[" + ",".join(items) + "]")
    for source in ("rows.jsonl", "rows.json"):
        data_params("params.yaml", source)
        code, out = cli("prepare_preference")
        assert code == 0, out
        metrics = json.loads(Path("metrics/full/prepare_preference.json").read_text())
        assert metrics["invalid/bad_json"] == 0  # the BOM is not part of the first row
        assert metrics["invalid/duplicate_key"] == 1 and metrics["data/rows_valid"] == 9
        [bad] = read_jsonl(f"data/invalid/{source.split('.')[0]}.jsonl")
        assert bad["reason"] == "duplicate_key" and bad["line"] == (5 if "l" in source[-1] else 8)
        assert ("'chosen'" if source.endswith("l") else "'a'") in bad["detail"]


def test_deeply_nested_rows_are_bad_json_and_a_deep_json_file_is_one_line(workdir):
    deep = "[" * 5_000 + "]" * 5_000  # RecursionError in json.loads before
    just = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # the row object is level 1
    rows = [pref(i) for i in range(8)]
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2][:-1] + f', "meta": {deep}}}'
    lines[3] = lines[3][:-1] + f', "meta": {just}}}'
    Path("rows.jsonl").write_text("\n".join(lines) + "\n")
    data_params("params.yaml", "rows.jsonl")
    code, out = cli("prepare_preference")
    assert code == 0, out
    [bad] = read_jsonl("data/invalid/rows.jsonl")
    assert (bad["reason"], bad["line"]) == ("bad_json", 3)
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in bad["detail"]

    Path("rows.json").write_text("[" + json.dumps(pref(0))[:-1] + f', "x": {deep}}}]')
    data_params("params.yaml", "rows.json")
    out = one_line(*cli("prepare_preference"))
    assert f"rows.json: a row nests arrays/objects deeper than {MAX_JSON_DEPTH} levels" in out


# -- unwritable outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_read_only_output_folder_is_one_line_naming_the_path(workdir, monkeypatch, code):
    """Root ignores permission bits, so the refusal is injected where the OS would give it:
    creating the output's temporary sibling in data/."""
    Path("rows.jsonl").write_text("".join(json.dumps(pref(i)) + "\n" for i in range(6)))
    data_params("params.yaml", "rows.jsonl")
    real = tempfile.mkdtemp

    def refuse(prefix=None, dir=None, **kw):
        if dir is not None and Path(dir).name == "data":
            path = os.path.join(dir, f"{prefix}x")
            raise OSError(code, os.strerror(code), path)
        return real(prefix=prefix, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = one_line(*cli("prepare_preference"))
    why = "permission denied" if code == errno.EACCES else "read-only file system"
    assert out.startswith(f"error: prepare_preference: data/prompts: {why}; fix the permissions")
