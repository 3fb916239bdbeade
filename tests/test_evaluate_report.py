"""evaluate's report, plots, DVC plot data and samples, from a hand-made result (no models)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from rlhf_lab.config import EvalConfig, EvalGates
from rlhf_lab.evaluation import figures, metrics, pipeline, report, scoring
from rlhf_lab.reward_components import REWARD_MODEL

N = 8
ROWS = [
    {
        "id": f"p{i}",
        "prompt": [{"role": "user", "content": f"question {i} | with a pipe"}],
        "reference": f"answer number {i}" if i % 4 else None,
    }
    for i in range(N)
]


def _outputs() -> dict[str, metrics.ModelOutputs]:
    rng = np.random.default_rng(0)
    refs = [scoring.reference_of(r) for r in ROWS]
    has_ref = np.array([r is not None for r in refs])
    out = {}
    for who, shift, texts in (
        ("sft", 0.0, [f"sft reply {i} is short" for i in range(N)]),
        ("ppo", 0.5, [f"ppo reply {i}\nis longer and longer" for i in range(N)]),
        ("dpo", 1.0, [f"dpo reply {i} differs" for i in range(N)]),
    ):
        bleu = np.where(has_ref, rng.uniform(0, 1, N), np.nan)
        out[who] = metrics.ModelOutputs(
            texts=texts,
            valid=np.ones(N, dtype=bool),
            n_tokens=[6] * N,
            eos=[True] * N,
            scores={
                REWARD_MODEL: rng.normal(shift, 1.0, N),
                "text/bleu": bleu,
                "text/length": rng.uniform(0, 1, N),
            },
            bertscore_f1=np.where(has_ref, 0.8, np.nan),
        )
    out["ref"] = metrics.ModelOutputs(
        texts=[r or "" for r in refs],
        valid=has_ref,
        scores={
            REWARD_MODEL: np.where(has_ref, 1.0, np.nan),
            "text/length": np.where(has_ref, 1.0, np.nan),
        },
    )
    return out


@pytest.fixture(scope="module")
def result() -> pipeline.EvalResult:
    # max_distinct2_drop=0 with PPO's repeated words fails exactly one soft gate: "adjust"
    gates = EvalGates(min_reward_gain=-10.0, max_distinct2_drop=0.0)
    cfg = EvalConfig(policies=["ppo", "dpo"], baseline="sft", n_boot=200, gates=gates)
    kl = {"ppo": np.full(N, 0.25), "dpo": np.full(N, 0.5)}
    return pipeline.finish("chat", ROWS, _outputs(), kl, cfg)


def test_histogram_fractions():
    edges, frac = figures.histogram({"a": np.array([0.0, 0.1, 1.0]), "b": np.array([0.5])}, 4)
    assert edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]  # [0, 1] scores: fixed bins
    assert frac["a"].tolist() == pytest.approx([2 / 3, 0, 0, 1 / 3])
    assert frac["b"].tolist() == [0, 0, 1, 0]
    edges, frac = figures.histogram({"a": np.array([-2.0, 2.0])}, 4)
    assert edges[0] == -2.0 and edges[-1] == 2.0 and frac["a"].sum() == 1.0


def test_plot_data_files(result, tmp_path):
    figures.write_plot_data(result, tmp_path)
    with (tmp_path / "dist" / "reward_model.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # one column per model, the baseline first, then the references
    assert len(rows) == figures.BINS and list(rows[0]) == ["score", "sft", "ppo", "dpo", "ref"]
    for who in ("sft", "ppo", "dpo", "ref"):
        assert sum(float(r[who]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    with (tmp_path / "dist" / "text_bleu.csv").open() as fh:
        bleu = list(csv.DictReader(fh))
    assert all(r["ref"] == "" for r in bleu)  # references are not scored on BLEU
    for policy in ("ppo", "dpo"):
        with (tmp_path / "components" / f"{policy}.csv").open() as fh:
            comps = {r["component"]: r for r in csv.DictReader(fh)}
        assert set(comps) == {REWARD_MODEL, "text/bleu", "text/length"}
        assert comps["text/length"]["ref"] == "1.0"
        row = comps[REWARD_MODEL]
        assert list(row) == ["component", "sft", policy, "ref", "delta", "delta_ci_lo",
                             "delta_ci_hi"]  # fmt: skip
        assert float(row["delta"]) == pytest.approx(float(row[policy]) - float(row["sft"]))
    with (tmp_path / "rm_pairs.csv").open() as fh:
        pairs = list(csv.DictReader(fh))
    assert len(pairs) == N and list(pairs[0]) == ["id", "sft", "ppo", "dpo"]
    dpo_rm = result.outputs["dpo"].scores[REWARD_MODEL]
    assert [float(r["dpo"]) for r in pairs] == pytest.approx(dpo_rm, abs=1e-6)


def test_plot_images(result, tmp_path):
    paths = figures.write_plot_images(result, tmp_path)
    assert [p.name for p in paths] == [
        "reward_hist.png",
        "component_hists.png",
        "component_delta.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_layout(result):
    md = report.render_report(
        result, plots_rel="../plots/evaluate", run_params={"ppo.lr": 5e-5}, n_boot=200
    )
    assert md.startswith("# Evaluation: PPO, DPO vs SFT")
    # PPO's repeated words fail one soft gate; DPO's distinct replies 1 std above SFT pass all
    assert result.verdicts["ppo"].decision == "adjust"
    assert result.verdicts["dpo"].decision == "proceed"
    assert (
        "- **PPO: ADJUST** (generic rule) — decided by `distinct2_drop`; failing gate: "
        "`distinct2_drop`." in md
    )
    assert "- **DPO: PROCEED** (generic rule) — every gate passes." in md
    assert "Generic rule, per policy" in md and "Protocol rule" not in md
    for heading in (
        "## Verdicts",
        "## Headline",
        "## PPO vs SFT",
        "## DPO vs SFT",
        "### Gates (PPO)",
        "### Gates (DPO)",
        "### Reward components (DPO)",
        "### Five largest PPO gains over SFT (reward model)",
        "### Five largest DPO losses to SFT (reward model)",
        "## Run parameters",
    ):
        assert heading in md
    # one column per model, one delta column per policy
    assert "| metric | SFT | PPO | DPO | PPO − SFT | DPO − SFT | references |" in md
    assert "length-controlled win rate vs SFT" in md
    assert "Wilcoxon signed-rank test, two-sided" in md
    assert "](../plots/evaluate/reward_hist.png)" in md
    assert "| `ppo.lr` | 5.0e-05 |" in md
    assert "question 1 \\| with a pipe" in md  # table cells stay one cell
    assert "ppo reply 1<br>is longer" in md
    gains = md.split("### Five largest PPO gains")[1].split("### Five largest PPO losses")[0]
    assert gains.count("| 1. `") == 1 and gains.count("`p") <= 5


def test_cell_escaping():
    assert report.cell("a|b\nc\x00<d>") == "a\\|b<br>c&lt;d&gt;"
    assert report.cell("x" * 50, limit=10) == "x" * 9 + "…"
    assert report.cell("") == "*(empty)*"


def test_samples(result):
    rows = report.sample_rows(result)
    assert len(rows) == N
    first, second = rows[0], rows[1]
    assert first["reference"] is None and first["reference_scores"] == {}
    assert "text/bleu" not in first["sft_scores"] and "bertscore_f1" not in first["sft_scores"]
    assert second["sft_scores"]["bertscore_f1"] == 0.8
    assert set(second["reference_scores"]) == {REWARD_MODEL, "text/length"}
    assert second["sft_reply"] == "sft reply 1 is short" and second["kl_ppo_sft"] == 0.25
    assert second["dpo_reply"] == "dpo reply 1 differs" and second["kl_dpo_sft"] == 0.5
    assert second["baseline"] == "sft" and second["policies"] == ["ppo", "dpo"]
    assert second["dpo_tokens"] == 6 and second["dpo_eos"] is True
    assert second["dpo_scores"][REWARD_MODEL] == pytest.approx(
        result.outputs["dpo"].scores[REWARD_MODEL][1], abs=1e-6
    )


def test_flatten_params():
    flat = report.flatten_params({"ppo": {"lr": 1.0, "lora": {"r": 4}}, "task": {"name": "chat"}})
    assert flat == {"ppo.lr": 1.0, "ppo.lora.r": 4, "task.name": "chat"}


def test_ecdf_and_grid_shape():
    from rlhf_lab.evaluation.plotting import ecdf, grid_shape

    x, y = ecdf([3.0, 1.0, float("nan"), 2.0, 2.0])
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
    # as few spare cells as possible, at most 3 wide
    shapes = {n: grid_shape(n) for n in (1, 2, 3, 4, 5, 6, 8, 9)}
    assert shapes == {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 5: (2, 3), 6: (2, 3),
                      8: (4, 2), 9: (3, 3)}  # fmt: skip


def test_samples_carry_the_task_flags_per_reply(result):
    import dataclasses

    flags = {"rec_hit": np.array([1.0, 0.0] + [np.nan] * (N - 2))}
    outputs = dict(result.outputs)
    outputs["ppo"] = dataclasses.replace(outputs["ppo"], task_flags=flags)
    rows = report.sample_rows(dataclasses.replace(result, outputs=outputs))
    assert rows[0]["ppo_scores"]["flag/rec_hit"] == 1.0
    assert rows[1]["ppo_scores"]["flag/rec_hit"] == 0.0
    assert "flag/rec_hit" not in rows[2]["ppo_scores"]  # no flag: left out, not faked
    assert not [k for k in rows[0]["sft_scores"] if k.startswith("flag/")]
