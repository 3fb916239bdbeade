"""Corrupt sources through the real ``rlhf-lab`` CLI: a corrupt container (gzip cut or damaged
mid-stream, a parquet page) fails the stage with one line naming the file and where reading
stopped; a bad row (lone surrogates anywhere, non-JSON raw values, code too deeply nested for
``ast.parse``) lands in data/invalid with its reason and never crashes; a bad movie catalogue is
one line in every stage that loads it."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.errors import DataError
from rlhf_lab.io import read_jsonl
from rlhf_lab.tasks import crs
from rlhf_lab.tasks.docstring import analyze_function, clean_docstring, score_components


def run(stage: str, data: dict, task: str = "chat") -> tuple[int, str]:
    Path("params.yaml").write_text(yaml.safe_dump({"data": data, "task": {"name": task}}))
    result = CliRunner().invoke(app, [stage, "--params", "params.yaml"])
    return result.exit_code, result.output


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def policy_workdir(tiny_models, workdir) -> Path:
    """A scratch repo root with models/base/policy (for formats whose pairs need samples)."""
    models.materialise_policy(
        str(tiny_models["policy"]), workdir / "models/base/policy", "float32", None
    )
    return workdir


def hh(i: int, chosen: str = "sure, here it is", rejected: str | None = "no") -> dict:
    t = f"\n\nHuman: question number {i}?\n\nAssistant: "
    return {"chosen": t + chosen, "rejected": None if rejected is None else t + rejected}


def assert_one_line_error(code: int, out: str, message: str) -> None:
    assert code == 2, out
    assert out.count("\n") == 1 and out.startswith("error: "), out
    assert message in out, out


# ------------------------------------------------------------------ corrupt containers


HH_GZ = gzip.compress("".join(json.dumps(hh(i)) + "\n" for i in range(3000)).encode(), mtime=0)


def complete_lines(gz: bytes) -> int:
    """Lines a reader can get out of a damaged gzip before the damage (no partial last line)."""
    text = zlib.decompressobj(wbits=31).decompress(gz)
    return text.count(b"\n")


def test_gzip_cut_mid_stream_is_one_line_naming_the_last_line_read(workdir):
    cut = HH_GZ[: len(HH_GZ) // 2]
    (workdir / "pairs.jsonl.gz").write_bytes(cut)
    code, out = run("prepare_preference", {"source": "pairs.jsonl.gz"})
    n = complete_lines(cut)
    assert 0 < n < 3000
    assert_one_line_error(
        code,
        out,
        f"pairs.jsonl.gz: cannot read after line {n}: Compressed file ended before the "
        "end-of-stream marker was reached",
    )
    assert not (workdir / "data").exists()  # nothing written from the rows read before


def test_gzip_corrupt_mid_stream_zlib_error_is_one_line(workdir):
    # A valid gzip member of 3000 lines, then a member whose deflate data opens with the
    # reserved block type 11: zlib.error exactly after line 3000.
    bad_member = gzip.compress(b"", mtime=0)[:10] + b"\xff" * 16
    (workdir / "pairs.jsonl.gz").write_bytes(HH_GZ + bad_member)
    code, out = run("prepare_preference", {"source": "pairs.jsonl.gz"})
    # before: zlib.error escaped read_jsonl (it is neither OSError nor EOFError): a traceback
    assert_one_line_error(
        code,
        out,
        "pairs.jsonl.gz: cannot read after line 3000: Error -3 while decompressing data: "
        "invalid block type",
    )
    assert not (workdir / "data").exists()


def test_parquet_corrupt_page_is_one_line_naming_the_row_group(workdir):
    rows = [hh(i) for i in range(100)]
    table = pa.table({k: [r[k] for r in rows] for k in ("chosen", "rejected")})
    pq.write_table(table, "pairs.parquet", row_group_size=50)
    column = pq.ParquetFile("pairs.parquet").metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(Path("pairs.parquet").read_bytes())
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    Path("pairs.parquet").write_bytes(bytes(raw))
    code, out = run("prepare_preference", {"source": "pairs.parquet"})
    message = "pairs.parquet: cannot read parquet row group 1 (rows after 50): "
    assert_one_line_error(code, out, message)
    assert not (workdir / "data").exists()


# ------------------------------------------------------------------ bad rows -> data/invalid


def test_parquet_rejected_row_with_timestamps_and_bytes_is_recorded(workdir):
    # before: json.dumps(datetime) raised TypeError while writing data/invalid
    rows = [hh(i) for i in range(5)] + [hh(5, rejected=None)]
    table = pa.table(
        {
            "chosen": [r["chosen"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "created": [dt.datetime(2020, 1, 2, 3, 4, i) for i in range(6)],
            "blob": [bytes([0, 255, i]) for i in range(6)],
        }
    )
    pq.write_table(table, "pairs.parquet")
    code, out = run("prepare_preference", {"source": "pairs.parquet"})
    assert code == 0, out
    [bad] = read_jsonl(workdir / "data/invalid/pairs.jsonl")
    assert (bad["reason"], bad["field"], bad["line"]) == ("missing_field", "rejected", 6)
    assert bad["raw"]["created"] == "2020-01-02 03:04:05"
    assert bad["raw"]["blob"] == "b'\\x00\\xff\\x05'"
    metrics = json.loads((workdir / "metrics/full/prepare_preference.json").read_text())
    assert metrics["invalid/missing_field"] == 1 and metrics["data/rows_kept"] == 5


def redial(i: int, **changes) -> dict:
    dialogue = {
        "conversationId": str(i),
        "respondentWorkerId": 2,
        "initiatorWorkerId": 1,
        "movieMentions": {"10": "Alien (1979)"},
        "respondentQuestions": {"10": {"suggested": 1}},
        "messages": [
            {"text": f"hi! any scary movie? ({i})", "senderWorkerId": 1},
            {"text": "try @10", "senderWorkerId": 2},
            {"text": "seen it, another?", "senderWorkerId": 1},
            {"text": "sorry, that is all I know", "senderWorkerId": 2},
        ],
    }
    return dialogue | changes


def test_lone_surrogates_outside_the_texts_go_to_invalid_before_sampling(policy_workdir):
    # json.dumps writes "\ud800" as the escape a real file would hold. Before: these passed
    # validation, the base policy sampled for them, then writing data/prompts raised
    # UnicodeEncodeError.
    lines = [
        redial(0),
        redial(1),
        redial(2),
        redial(3, movieMentions={"10": "Alien (1979)", "11": "Bad \ud800 Name"}),
        redial(4, conversationId="c\udc80"),
        redial(5, movieMentions={"10": "Alien (1979)", "\ud83d": "Heat (1995)"}),
    ]
    Path("dialogues.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    data = {
        "source": "dialogues.jsonl",
        "sample_max_new_tokens": 3,
        "unfinished_samples": "keep",
        "max_invalid_fraction": 0.5,
    }
    code, out = run("prepare_preference", data, task="crs")
    assert code == 0, out
    invalid = read_jsonl(policy_workdir / "data/invalid/dialogues.jsonl")
    got = [(r["line"], r["reason"], r["field"]) for r in invalid]
    # two recommender turns per dialogue, each an example of its own
    assert got == [
        (4, "bad_encoding", "meta.movies.11"),
        (4, "bad_encoding", "meta.movies.11"),
        (5, "bad_encoding", "id"),
        (5, "bad_encoding", "id"),
        (6, "bad_encoding", "meta.movies key"),
        (6, "bad_encoding", "meta.movies key"),
    ]
    assert invalid[0]["detail"] == "unencodable character \\ud800 at 4"
    assert invalid[0]["raw"]["meta"]["movies"]["11"] == "Bad \\ud800 Name"  # escaped, kept
    metrics = json.loads((policy_workdir / "metrics/full/prepare_preference.json").read_text())
    assert metrics["invalid/bad_encoding"] == 6 and metrics["sample/count"] == 6


def nested(kind: str) -> str:
    """A function nested 5000 deep in ways CPython's parser refuses differently."""
    if kind == "blocks":  # IndentationError: too many levels of indentation (limit 100)
        blocks = "".join("    " * (i + 1) + "if x:\n" for i in range(150))
        return f"def f(x):\n{blocks}{'    ' * 151}pass\n"
    body = {
        "unary": "-" * 5000 + "x",  # RecursionError
        "lambdas": "lambda: " * 3000 + "x",  # MemoryError (the parser's own stack)
        "parens": "(" * 5000 + "x" + ")" * 5000,  # SyntaxError: too many nested parentheses
    }[kind]
    return f"def f(x):\n    return {body}\n"


def test_code_too_nested_for_ast_parse_goes_to_invalid(policy_workdir):
    good = [
        {"code": f"def f{i}(a):\n    return a + {i}\n", "docstring": f"Add {i} to a."}
        for i in range(4)
    ]
    bad = [
        {"code": nested("unary"), "docstring": "Negate."},
        {"code": nested("lambdas"), "docstring": "Lambdas."},
        {"code": nested("parens"), "docstring": "Parens."},
        {"code": nested("blocks"), "docstring": "Blocks."},
        {"code": "def g(a):\n    return a\n", "docstring": "Id.", "url": "https://x/\ud800"},
    ]
    Path("functions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    data = {
        "source": "functions.jsonl",
        "sample_max_new_tokens": 3,
        "unfinished_samples": "keep",
        "max_invalid_fraction": 0.6,  # 5 of 9 rows are bad
    }
    code, out = run("prepare_preference", data, task="docstring")
    assert code == 0, out
    invalid = read_jsonl(policy_workdir / "data/invalid/functions.jsonl")
    got = [(r["line"], r["reason"], r["field"], r["detail"]) for r in invalid]
    assert got == [
        (5, "code_too_nested", "code", "ast.parse raised RecursionError"),
        (6, "code_too_nested", "code", "ast.parse raised MemoryError"),
        (7, "code_too_nested", "code", "ast.parse: too many nested parentheses"),
        (8, "code_too_nested", "code", "ast.parse: too many levels of indentation"),
        (9, "bad_encoding", "meta.source_id", "unencodable character \\ud800 at 10"),
    ]
    metrics = json.loads((policy_workdir / "metrics/full/prepare_preference.json").read_text())
    assert metrics["invalid/code_too_nested"] == 4 and metrics["data/rows_kept"] == 4


@pytest.mark.parametrize("depth", [1000, 2000])
def test_code_that_parses_but_nests_past_the_recursion_limit_is_analysed(depth):
    # ast.parse takes these; the recursive raise-finder then hit RecursionError while scoring
    # (score_with_llm, train_ppo, evaluate), after all the sampling was done.
    code = f"def check(x):\n    if x:\n        raise ValueError({'-' * depth}x)\n    return x\n"
    facts = analyze_function(code)
    assert facts.parse_ok and facts.raises == ("ValueError",) and facts.params == ("x",)
    assert facts.control_flow == ("if",) and facts.returns_value
    scores = score_components("Check x. Raises ValueError if x is set.", {"meta": {"code": code}})
    assert scores["param_coverage"] == 1.0 and scores["raises_mention"] == 1.0
    assert clean_docstring(nested("unary")) == nested("unary").strip()  # unparsable: as is


# ------------------------------------------------------------------ movie catalogue

CATALOGUE_CASES = [
    ("movieId,name\n1,Alien\n", "movies.csv:1: catalogue header lacks movieName"),
    ("movieId,movieName\n1,Alien (1979)\n2\n", "movies.csv:3: catalogue row has 1 field, "),
    ("movieName,movieId\nAlien,1\n,2\n", "movies.csv:3: catalogue row has an empty movieName"),
    ("movieId,movieName\n1,Alien\n\n ,Heat\n", "movies.csv:4: catalogue row has an empty movieId"),
    # an unclosed quote would otherwise swallow the rest of the file into one movie name
    ('movieId,movieName\n1,Alien\n2,"Heat\n3,Up\n', "movies.csv:3: bad CSV: unexpected end of"),
    ('movieId,movieName\n1,"Alien" (1979)\n', "movies.csv:2: bad CSV: ',' expected after '\"'"),
    (b"movieId,movieName\n1,Am\xe9lie\n", "movies.csv:2: not valid UTF-8 (byte 0xe9 at offset"),
    ("", "movies.csv: the movie catalogue is empty (expected a movieId,movieName header)"),
]


@pytest.mark.parametrize(("content", "message"), CATALOGUE_CASES)
def test_bad_catalogue_is_one_data_error_naming_file_and_line(workdir, content, message):
    path = workdir / "movies.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as info:
        crs.MovieCatalogue.from_csv(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_short_row_message_names_the_expected_columns(workdir):
    Path("movies.csv").write_text("movieId,movieName,nbMentions\n1,Alien (1979),3\n2\n")
    with pytest.raises(DataError) as info:
        crs.MovieCatalogue.from_csv("movies.csv")
    assert str(info.value) == "movies.csv:3: catalogue row has 1 field, expected movieId,movieName"


def test_good_catalogue_still_loads(workdir):
    Path("movies.csv").write_text('movieId,movieName\n1,"Good Morning, Vietnam (1987)"\n\n2,Up\n')
    cat = crs.MovieCatalogue.from_csv("movies.csv")
    assert cat.name("1") == "Good Morning, Vietnam (1987)" and cat.name("2") == "Up"


def write_bad_catalogue_inputs() -> dict:
    """A catalogue with a short row, a ReDial source and a preference file (score_with_llm's
    input), so each stage gets as far as loading the catalogue; returns the data section."""
    Path("movies.csv").write_text("movieId,movieName\n1,Alien (1979)\n2\n")
    Path("dialogues.jsonl").write_text(json.dumps(redial(0)) + "\n")
    pref = {
        "id": "a",
        "prompt": [{"role": "user", "content": "any scary movie?"}],
        "chosen": "try Alien (1979)",
        "rejected": "no idea",
        "label_source": "human",
        "meta": {},
    }
    Path("data/preference").mkdir(parents=True)
    Path("data/preference/train.jsonl").write_text(json.dumps(pref) + "\n")
    return {"source": "dialogues.jsonl", "catalogue": "movies.csv"}


SHORT_ROW = "movies.csv:3: catalogue row has 1 field, expected movieId,movieName"


@pytest.mark.parametrize("stage", ["prepare_preference", "score_with_llm"])
def test_stages_that_load_the_catalogue_give_the_one_line(workdir, stage):
    # before: a short row became a movie named "None" (no error at all)
    code, out = run(stage, write_bad_catalogue_inputs(), task="crs")
    assert_one_line_error(code, out, SHORT_ROW)


def test_the_reward_factory_gives_the_same_line(workdir):
    # train_ppo (build_scorer), evaluate and analyze_rewards load data.catalogue here, after
    # checking that their input models exist; a CLI run would need trained models.
    from rlhf_lab.config import parse_params
    from rlhf_lab.reward_components import RuleContext

    params = parse_params({"task": {"name": "crs"}, "data": write_bad_catalogue_inputs()})
    with pytest.raises(DataError) as info:
        RuleContext.from_params(params)
    assert str(info.value) == SHORT_ROW


def test_missing_catalogue_is_one_line(workdir):
    data = write_bad_catalogue_inputs() | {"catalogue": "nope.csv"}
    code, out = run("score_with_llm", data, task="crs")
    assert_one_line_error(code, out, f"data.catalogue: file not found ({workdir / 'nope.csv'})")
