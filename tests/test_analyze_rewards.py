"""analyze_rewards: good vs deliberately bad replies, one-line input errors, the CLI's outputs."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from rlhf_lab import reward_components
from rlhf_lab.cli import app
from rlhf_lab.config import DataConfig, Params
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.evaluation import reward_check as ar
from rlhf_lab.evaluation.plotting import BINS
from rlhf_lab.tasks import crs
from rlhf_lab.tasks import docstring as ds

# (function source, its good docstring): the fixture corpus of the docstring check.
FUNCTIONS = [
    (
        "def clamp(value, low, high):\n    if value < low:\n        return low\n"
        "    if value > high:\n        return high\n    return value\n",
        "Return value limited to the range [low, high]: low if it is below, high if above.",
    ),
    (
        "def save(data, path, overwrite=False):\n    if path.exists() and not overwrite:\n"
        "        raise FileExistsError(path)\n    path.write_text(data)\n",
        "Write data to the file at path. Raises FileExistsError if it exists and overwrite "
        "is not set.",
    ),
    (
        "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
        "    return total / len(xs)\n",
        "Return the arithmetic mean of xs, summing over each element.",
    ),
    (
        "def retry(fn, attempts=3):\n    while attempts:\n        try:\n            return fn()\n"
        "        except OSError:\n            attempts -= 1\n    raise TimeoutError()\n",
        "Call fn, retrying until it succeeds or attempts run out; on each OSError try again. "
        "Returns its result, raises TimeoutError when every attempt fails.",
    ),
    (
        "def find_user(users, name, default=None):\n    for user in users:\n"
        "        if user.name == name:\n            return user\n    return default\n",
        "Return the first of users whose name matches, iterating over all of them; "
        "default if none matches.",
    ),
    (
        "def parse_port(text):\n    try:\n        port = int(text)\n    except ValueError:\n"
        "        raise ConfigError(text)\n    return port\n",
        "Return text parsed as a port number; raises ConfigError if text is not an integer.",
    ),
]


def _doc_row(i: int, code: str, doc: str) -> dict:
    prompt = [{"role": "user", "content": f"Write a docstring.\n\n```python\n{code}```"}]
    return {"id": f"doc-{i}", "prompt": prompt, "reference": doc, "meta": {"code": code}}


DOC_ROWS = [_doc_row(i, code, doc) for i, (code, doc) in enumerate(FUNCTIONS)]

MOVIES = {
    "1": "Man on Wire (2008)",
    "2": "The Post (2017)",
    "3": "Bowling for Columbine (2002)",
    "4": "Up (2009)",
}
CRS_ROWS = [
    {
        "id": f"crs-{i}",
        "prompt": [{"role": "user", "content": "Any good documentaries?"}],
        "reference": ref,
        "meta": {"movies": MOVIES, "gold_movies": gold},
    }
    for i, (ref, gold) in enumerate(
        [
            ("Have you seen Man on Wire (2008)? It is a great one.", ["1"]),
            ("Oh then you should watch Bowling for Columbine (2002)!", ["3"]),
            ("I loved Up (2009), it's sweet and a little sad.", ["4"]),
        ]
    )
]


def _check(rows, task, weights=None):
    fns = ar.component_functions(task, Params())
    return ar.run_check(rows, task, fns, weights or reward_components.default_weights(task), "test")


# --------------------------------------------------------------------------------- the check


def test_docstring_good_beats_bad_by_more_than_the_threshold():
    check = _check(DOC_ROWS, "docstring")
    m = check.metrics
    assert m["analyze/rows"] == len(FUNCTIONS)
    assert m["analyze/gap/total"] > ar.MIN_GAP and m["analyze/pass"] == 1
    assert m["analyze/pair_accuracy"] > 0.9
    # Every kind of bad docstring, and the structural components, lose to the reference.
    for kind in ("empty", "generic", "name_only", "wrong_params", "params_renamed"):
        assert m[f"analyze/gap_by_kind/{kind}"] > 0.2, kind
    for comp in ("param_coverage", "return_mention", "length", "bleu"):
        assert m[f"analyze/gap/docstring/{comp}"] > 0.2, comp
    # The reference compared with itself: BLEU 1, so it stays out of the headline total.
    assert m["analyze/good/docstring/bleu"] == pytest.approx(1.0)
    assert "docstring/bleu" not in check.weights and "docstring/bleu" in check.weights_ref
    assert m["analyze/gap/total_with_reference"] > m["analyze/gap/total"]
    assert sum(check.weights.values()) == pytest.approx(1.0)


def test_gap_is_the_mean_over_pairs_of_the_same_row():
    check = _check(DOC_ROWS[:2], "docstring")
    g, b = check.pairs()
    assert all(check.row_of[g] == check.row_of[b]) and set(check.kinds[i] for i in g) == {"good"}
    total = check.scores["total"]
    assert check.metrics["analyze/gap/total"] == pytest.approx(float((total[g] - total[b]).mean()))


def test_weights_from_params_when_they_name_task_components():
    weights, source = reward_components.task_weights(
        "docstring", {"reward_model": 1.0, "docstring/param_coverage": 2.0, "docstring/bleu": 1.0}
    )
    assert source == "reward.weights"
    assert weights == {"docstring/param_coverage": 2.0, "docstring/bleu": 1.0}
    assert ar.normalised(weights, reference_free=True) == {"docstring/param_coverage": 1.0}
    assert reward_components.task_weights("docstring", {"reward_model": 1.0})[1] == "task defaults"


def test_bad_docstring_variants():
    code, ref = FUNCTIONS[0]
    bads = ds.bad_docstring_variants(code, ref, FUNCTIONS[1][1])
    assert bads["empty"] == "" and bads["generic"] == ds.GENERIC_DOCSTRING
    assert bads["name_only"] == "clamp"
    assert bads["params_renamed"] == (
        "Return foo limited to the range [bar, baz]: bar if it is below, baz if above."
    )
    assert bads["other_function"] == FUNCTIONS[1][1]
    # A reference that names no parameter has no renamed variant (it would equal the good one).
    assert "params_renamed" not in ds.bad_docstring_variants(code, "Clip a number.")
    assert len(ds.bad_docstrings(code)) >= 4


def test_crs_good_beats_bad_and_other_movie_gets_partial_credit():
    check = _check(CRS_ROWS, "crs")
    m = check.metrics
    assert m["analyze/good/crs/recommendation"] == 1.0
    assert m["analyze/gap/total"] > ar.MIN_GAP
    assert m["analyze/gap_by_kind/other_movie"] == pytest.approx(1.0 - crs.PARTIAL_CREDIT)
    assert m["analyze/gap_by_kind/movie_removed"] == pytest.approx(1.0)


def test_crs_movie_removal_keeps_common_words():
    row = CRS_ROWS[2]
    bads = crs.bad_reply_variants(row)
    # "Up (2009)" is removed with its year; the word "up" alone would not have been.
    assert bads["movie_removed"] == "I loved that one, it's sweet and a little sad."
    assert "Man on Wire" in bads["other_movie"] or "The Post" in bads["other_movie"]


def test_chat_task_is_refused():
    with pytest.raises(ConfigError, match="task is 'chat'"):
        ar.check_task("chat")


# --------------------------------------------------------------------------------- inputs


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_inputs_from_prompt_rows_and_from_a_source_file(tmp_path):
    rows = _write_jsonl(tmp_path / "rows.jsonl", [*DOC_ROWS, {**DOC_ROWS[0], "reference": None}])
    got = ar.load_inputs(rows, "docstring", DataConfig())
    assert got.kind == "prompt rows" and len(got.rows) == len(FUNCTIONS) and got.skipped == 1
    raw = [{"id": f"f{i}", "code": c, "docstring": d} for i, (c, d) in enumerate(FUNCTIONS)]
    src = _write_jsonl(tmp_path / "functions.jsonl", raw)
    got = ar.load_inputs(src, "docstring", DataConfig(max_examples=0))
    assert got.kind == "docstring" and len(got.rows) == len(FUNCTIONS)
    assert all(r["meta"]["code"] and r["reference"] for r in got.rows)
    with pytest.raises(DataError, match="reads as docstring rows; the crs task needs redial"):
        ar.load_inputs(src, "crs", DataConfig())


def test_missing_input_is_a_one_line_error_naming_the_file(tmp_path):
    with pytest.raises(DataError) as info:
        ar.load_inputs(tmp_path / "nope.jsonl", "docstring", DataConfig())
    assert "nope.jsonl: input file not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_line_is_a_one_line_error_naming_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(DOC_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError) as info:
        ar.load_inputs(path, "docstring", DataConfig())
    assert f"{path}:2: bad_json" in str(info.value) and "\n" not in str(info.value)
    path.write_text(json.dumps(DOC_ROWS[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not a prompt row"):
        ar.load_inputs(path, "docstring", DataConfig())


def test_bad_samples_file(tmp_path):
    with pytest.raises(DataError, match="samples file not found"):
        ar.read_samples(tmp_path / "samples.jsonl")
    path = _write_jsonl(tmp_path / "samples.jsonl", [{"id": "x", "sft_reply": "a"}])
    with pytest.raises(DataError, match=r"samples\.jsonl:1: .*'ppo_reply'"):
        ar.read_samples(path)
    # evaluate's samples name their baseline and policies: each needs its reply
    row = {"id": "x", "baseline": "sft", "policies": ["ppo", "dpo"], "sft_reply": "a"}
    path = _write_jsonl(tmp_path / "samples.jsonl", [{**row, "ppo_reply": "b"}])
    with pytest.raises(DataError, match=r"samples\.jsonl:1: .*'dpo_reply'"):
        ar.read_samples(path)
    assert ar.reply_sets(row) == ("sft", "ppo", "dpo", "ref")
    assert ar.reply_sets({"id": "x"}) == ("sft", "ppo", "ref")  # a file without the names


# --------------------------------------------------------------------------------- the CLI


def _samples(rows):
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "reference": r["reference"],
            "baseline": "sft",
            "policies": ["ppo", "dpo"],
            "sft_reply": "Does something.",
            "ppo_reply": r["reference"],
            "dpo_reply": r["reference"].split(".")[0],
        }
        for r in rows
    ]


def test_command_writes_metrics_plots_and_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("task:\n  name: docstring\n")
    _write_jsonl(tmp_path / "rows.jsonl", DOC_ROWS)
    samples = _samples(DOC_ROWS)
    _write_jsonl(tmp_path / "samples.jsonl", [*samples, {**samples[0], "id": "gone"}])
    result = CliRunner().invoke(
        app, ["analyze_rewards", "--input", "rows.jsonl", "--samples", "samples.jsonl"]
    )
    assert result.exit_code == 0, result.output

    m = json.loads((tmp_path / "metrics/analyze_rewards.json").read_text())
    assert m["analyze/task"] == "docstring" and m["analyze/pass"] == 1
    assert m["analyze/gap/total"] > ar.MIN_GAP
    for key, value in m.items():
        if key.startswith(("analyze/good/", "analyze/bad/", "analyze/samples/sft/")):
            assert 0.0 <= value <= 1.0, key
        if key.startswith(("analyze/gap/", "analyze/gap_by_kind/")):
            assert -1.0 <= value <= 1.0, key
    # The model-output breakdown: the "PPO" replies are the references, SFT's are generic.
    assert m["analyze/samples/matched"] == len(DOC_ROWS) and m["analyze/samples/unmatched"] == 1
    assert m["analyze/samples/ppo/total"] == pytest.approx(m["analyze/samples/ref/total"])
    assert m["analyze/samples/ppo/total"] > m["analyze/samples/sft/total"]
    assert 0.0 <= m["analyze/samples/dpo/total"] <= 1.0  # every policy evaluate ran
    assert "analyze/samples/ref/docstring/bleu" not in m  # a reference is not compared with itself

    out = tmp_path / "plots/analyze_rewards"
    for name in ("summary.md", "hists.png", "gaps.png", "samples_hists.png", "scores.jsonl"):
        assert (out / name).stat().st_size > 0, name
    with (out / "dist/total.csv").open() as fh:
        dist = list(csv.DictReader(fh))
    assert len(dist) == BINS and sum(float(r["good"]) for r in dist) == pytest.approx(1.0)
    with (out / "components.csv").open() as fh:
        comps = {r["component"]: r for r in csv.DictReader(fh)}
    assert float(comps["total"]["gap"]) == pytest.approx(m["analyze/gap/total"], abs=1e-6)
    with (out / "samples.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["component", "sft", "ppo", "dpo", "ref"]
        assert {r["component"] for r in reader} >= {"total", "docstring/length"}
    summary = (out / "summary.md").read_text()
    assert "**PASS**" in summary and "| params_renamed |" in summary
    assert "| component | SFT | PPO | DPO | references |" in summary
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == len(DOC_ROWS) + m["analyze/pairs"]


def test_command_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("task:\n  name: chat\n")
    runner = CliRunner()
    result = runner.invoke(app, ["analyze_rewards"])
    assert result.exit_code == 2 and "task is 'chat'" in result.output
    result = runner.invoke(app, ["analyze_rewards", "--task", "docstring", "--input", "x.jsonl"])
    assert result.exit_code == 2
    assert "x.jsonl: input file not found" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "metrics").exists()


# --------------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_docstring_rewards_discriminate_on_the_shared_corpus(shared_data):
    path = shared_data / "docstring/valid.jsonl.gz"
    inputs = ar.load_inputs(path, "docstring", DataConfig(), limit=400)
    assert len(inputs.rows) >= 350
    m = _check(inputs.rows, "docstring").metrics
    assert m["analyze/gap/total"] > ar.MIN_GAP
    assert m["analyze/pair_accuracy"] > 0.85


@pytest.mark.shared_data
def test_crs_reward_discriminates_on_redial(shared_data):
    path = shared_data / "redial/valid_data.jsonl.gz"
    inputs = ar.load_inputs(path, "crs", DataConfig(), limit=0)
    assert len(inputs.rows) >= 100
    m = _check(inputs.rows, "crs").metrics
    assert m["analyze/good/crs/recommendation"] > 0.95
    assert m["analyze/gap/total"] > 0.5
