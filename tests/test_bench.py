"""The benchmarks' plumbing: a --tiny run never writes the committed results files, the
throughput bench's levers keep greedy outputs, and its fractions of peak are the stated formula."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# The scripts import their shared module (bench/benchlib.py) as run from bench/.
sys.path.insert(0, str(BENCH))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _tiny_paths(name: str, tmp_path, monkeypatch):
    """Bench ``name`` with its real and tiny results files and its work folder under
    ``tmp_path``: ``(module, real results path, tiny results path)``."""
    bench = _load(name)
    real, tiny = tmp_path / "real.json", tmp_path / "tiny.json"
    monkeypatch.setattr(bench, "RESULTS", real)
    monkeypatch.setattr(bench, "TINY_RESULTS", tiny)
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    return bench, real, tiny


def test_ppo_vs_trl_tiny_never_overwrites_the_committed_results():
    bench = _load("ppo_vs_trl")
    assert bench.results_path(None, tiny=False) == bench.RESULTS
    tiny = bench.results_path(None, tiny=True)
    assert tiny != bench.RESULTS
    # Under bench/.work, which .gitignore lists: a smoke run leaves nothing to commit.
    assert tiny.is_relative_to(bench.WORK) and bench.WORK == BENCH / ".work" / "ppo_vs_trl"
    assert "bench/.work/" in (BENCH.parent / ".gitignore").read_text().splitlines()
    assert bench.results_path(Path("x.json"), tiny=True) == Path("x.json")
    # the default layout is the pipeline's (the shared trunk); --separate-critic's figures go
    # to a file of their own, never the default's
    assert bench.results_path(None, tiny=False, shared_trunk=True) == bench.RESULTS
    separate = bench.results_path(None, tiny=False, shared_trunk=False)
    assert separate == bench.RESULTS.with_name("ppo_vs_trl_separate_critic.json")
    assert bench.results_path(None, tiny=True, shared_trunk=False).is_relative_to(bench.WORK)


def test_throughput_tiny_run(tmp_path, monkeypatch):
    bench, real, tiny = _tiny_paths("throughput", tmp_path, monkeypatch)
    argv = ["--tiny", "--batches", "2", "--dtypes", "fp32", "--variants", "dynamic,static"]
    argv += ["--new-tokens", "4", "--repeats", "1", "--matmul-size", "64", "--update-batch", "2"]
    argv += ["--threads", "1"]
    result = bench.main(argv)

    assert tiny.is_file() and not real.exists()
    written = json.loads(tiny.read_text())
    assert written.keys() == result.keys() and written["parameters"] == result["parameters"]
    peak = result["matmul/fp32_gflops"] * 1e9
    assert peak > 0 and result["matmul/bf16_gflops"] > 0
    # The peak is the better of the measurements at the start and at the end of the run.
    assert result["matmul/fp32_gflops"] == max(result["matmul/fp32_gflops_start_end"])
    params = result["parameters"]
    for variant in ("dynamic", "static"):
        key = f"generate/fp32/{variant}/b2"
        tps = result[f"{key}/tokens_per_s"]
        # 2 rows x 4 new tokens in the best call's seconds; 2 x params FLOPs per token.
        assert tps == pytest.approx(2 * 4 / result[f"{key}/seconds"])
        assert result[f"{key}/peak_fraction"] == pytest.approx(2 * params * tps / peak)
    assert result["generate/fp32/dynamic/b2/same_tokens"] is None  # it is the reference
    # A static KV cache is a speed lever only: the greedy tokens are the same.
    assert result["generate/fp32/static/b2/same_tokens"] is True
    upd = "update/fp32/b2"
    assert result[f"{upd}/tokens_per_s"] == pytest.approx(
        result[f"{upd}/tokens"] / result[f"{upd}/seconds"]
    )
    assert result[f"{upd}/peak_fraction"] == pytest.approx(
        6 * params * result[f"{upd}/tokens_per_s"] / peak
    )
    # The tiny Llama ties its head to the input embedding: the head is counted once.
    assert result["profile/active_params"] == params
    assert 0 < result["profile/lm_head_flop_share"] < 1


def test_arms_give_every_online_arm_the_same_replies_per_step():
    from rlhf_lab.config import PpoConfig

    bench = _load("arms")
    runs = dict(bench.experiments(list(bench.ONLINE), [0, 1], 16, {"ppo.steps": "6"}))
    assert list(runs) == [f"arms-{a}-s{s}" for s in (0, 1) for a in bench.ONLINE]
    for name, sets in runs.items():
        seed = name.rsplit("-s", 1)[1]
        assert sets["ppo.seed"] == sets["dpo.seed"] == seed and sets["ppo.steps"] == "6"
        ppo = PpoConfig(
            advantage=sets["ppo.advantage"],
            batch_size=int(sets.get("ppo.batch_size", 16)),
            num_generations=int(sets.get("ppo.num_generations", 1)),
        )
        # 16 scored replies per step and the same minibatch for every arm
        assert (ppo.rollout_size, ppo.minibatch_size) == (16, 8)
    assert runs["arms-grpo-s0"]["ppo.num_generations"] == str(bench.GROUP)
    # DPO (the same model in every experiment of a seed) is evaluated once per seed
    assert [n for n, sets in runs.items() if "eval.policies" not in sets] == [
        "arms-gae-s0",
        "arms-gae-s1",
    ]
    assert runs["arms-rloo-s1"]["eval.policies"] == "[ppo]"
    # --dpo-seed: one DPO model for every seed, evaluated once
    fixed = dict(bench.experiments(["gae", "grpo"], [0, 1, 2], 16, {}, dpo_seed=0))
    assert {sets["dpo.seed"] for sets in fixed.values()} == {"0"}
    assert [n for n, sets in fixed.items() if "eval.policies" not in sets] == ["arms-gae-s0"]
    with pytest.raises(SystemExit):
        bench.arm_overrides("rloo", 10)


def test_arms_set_passes_any_param_to_every_arm():
    bench = _load("arms")
    extra = bench.parse_sets(["dpo.max_length=128", "eval.policies=[ppo,dpo]"])
    assert extra == {"dpo.max_length": "128", "eval.policies": "[ppo,dpo]"}
    runs = dict(bench.experiments(["gae", "rloo"], [2], 16, extra))
    assert all(sets["dpo.max_length"] == "128" for sets in runs.values())
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_sets(["dpo.max_length"])


def test_bf16_training_dpo_step_learns_in_both_precisions(tmp_path):
    import math

    bench = _load("bf16_training")
    ws, params = bench.tiny_workspace(tmp_path)
    result = bench.compare("dpo", bench.dpo_step, ws, params, 4)
    for setting in bench.SETTINGS:
        # The policy starts as its reference: every implicit reward is 0, the loss log 2.
        assert result[setting]["loss_first"] == pytest.approx(math.log(2), abs=1e-6)
        assert result[setting]["loss_last"] < result[setting]["loss_first"] - 1e-3
    # the same seed, the same batch: the two precisions follow one curve
    assert result["bf16"]["loss_last"] == pytest.approx(result["fp32"]["loss_last"], abs=0.02)
    assert bench.WORK == BENCH / ".work"  # where --tiny writes: ignored by git


def test_bf16_training_a_partial_run_adds_its_stages_to_the_same_cpus_result():
    bench = _load("bf16_training")
    old = {
        "cpu": "cpu A",
        "steps": 6,
        "stages": {"sft": {"bf16_speedup": 0.6}, "dpo": {"bf16_speedup": 0.8}},
    }
    new = {"dpo": {"bf16_speedup": 0.9, "steps": 2}, "ppo_update": {"bf16_speedup": 1.1}}
    merged = bench.merged_stages(old, new, "cpu A")
    # the new run's stages win, the others stay, with the steps they were measured over
    assert merged == {
        "sft": {"bf16_speedup": 0.6, "steps": 6},
        "dpo": {"bf16_speedup": 0.9, "steps": 2},
        "ppo_update": {"bf16_speedup": 1.1},
    }
    # another CPU's figures are never mixed in, nor a missing file's
    assert bench.merged_stages(old, new, "cpu B") == new
    assert bench.merged_stages(None, new, "cpu A") == new


def test_benchlib_results_name_the_machine_but_no_path_of_it(tmp_path):
    import benchlib

    assert benchlib.shown_path(BENCH / "results" / "x.json") == "bench/results/x.json"
    # outside the repo: the workspace-relative tail only, never the scratch dir above it
    outside = tmp_path / "ws" / "models" / "sft"
    assert benchlib.shown_path(outside) == "…/ws/models/sft"
    assert str(tmp_path) not in benchlib.shown_path(outside)
    assert benchlib.shown_path(benchlib.shown_path(outside)) == "…/ws/models/sft"
    info = benchlib.machine(load_start=0.5)
    assert info["cpu"] and info["cpu_count"] >= 1 and info["torch_threads"] >= 1
    assert info["load_average_1min_start_end"][0] == 0.5
    assert "load_average_1min_start_end" not in benchlib.machine()
    # every script writes under the same two folders
    assert benchlib.RESULTS == BENCH / "results" and benchlib.WORK == BENCH / ".work"


def test_docstring_plan_runs_every_arm_on_the_preset():
    bench = _load("docstring")
    runs = dict(bench.plan([0, 1], 16, {"ppo.steps": "3"}))
    assert list(runs) == [f"docstring-{a}-s{s}" for s in (0, 1) for a in bench.ARMS]
    for sets in runs.values():
        assert sets["task.name"] == "docstring" and sets["ppo.steps"] == "3"
        assert sets["data.source"] == "../shared/data/docstring/valid.jsonl.gz"
    # the first arm of each seed evaluates DPO too; GRPO gets groups, the same replies per step
    assert "eval.policies" not in runs["docstring-gae-s1"]
    assert runs["docstring-grpo-s0"]["eval.policies"] == "[ppo]"
    assert runs["docstring-grpo-s0"]["ppo.batch_size"] == "4"
    verdicts = ["proceed", "adjust", "proceed"]
    compared = {
        "arms": [{"arm": "sft", "verdicts": [None]}, {"arm": "ppo:gae", "verdicts": verdicts}]
    }
    assert bench.proceed_counts(compared) == {"ppo:gae": "2/3"}


def test_rollout_levers_tiny_run_gives_the_plain_rollout(tmp_path, monkeypatch):
    bench, real, tiny = _tiny_paths("rollout_levers", tmp_path, monkeypatch)
    argv = ["--tiny", "--batch", "4", "--group", "2", "--new-tokens", "3", "--repeats", "1"]
    result = bench.main(argv)

    assert tiny.is_file() and not real.exists()
    assert json.loads(tiny.read_text())["levers"].keys() == set(bench.ARMS)
    for lever, arm in result["levers"].items():
        # each lever changes the work, not the rollout
        assert arm["same_replies"], lever
        assert arm["max_abs_diff"]["logprobs"] < 1e-5, lever
        assert all(v > 0 for v in arm["speedup_off_over_on"].values()), lever
    assert result["levers"]["share_prompt_cache"]["ppo"]["num_generations"] == 2


def test_crs_dry_run_prints_every_arm_and_seed_on_the_preset(capsys, monkeypatch):
    bench = _load("crs")
    monkeypatch.setattr(sys, "argv", ["crs.py", "--dry-run", "--steps", "6"])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [
        f"crs-{a}-s{s}" for s in (0, 1, 2) for a in ("gae", "grpo")
    ]
    for line in lines:
        assert "-S task.name=crs" in line and "-S ppo.steps=6" in line
        assert "-S data.catalogue=../shared/data/redial/movies_with_mentions.csv" in line
        assert "crs/grounded: 1.0" in line  # the preset's reward weights
    # DPO evaluated once per seed, with gae; GRPO gets groups of 4, the same replies per step
    assert "eval.policies" not in lines[0] and "-S dpo.seed=0" in lines[0]
    assert "-S eval.policies=[ppo]" in lines[1] and "-S ppo.num_generations=4" in lines[1]


def _vs(mean_diff, p_key, p):
    return {"mean_diff": mean_diff, "ci_lo": mean_diff - 1, "ci_hi": mean_diff + 1, p_key: p}


def test_crs_result_assembles_compare_output_and_the_recommender():
    bench = _load("crs")

    def summary(mean):
        return {"mean": mean, "ci_lo": mean - 0.5, "ci_hi": mean + 0.5, "n": 3}

    compared = {
        "arms": [
            {"arm": "sft", "metrics": {"bleu1": summary(14.0), "rec_hit_rate": summary(0.1)}},
            {
                "arm": "ppo:gae",
                "metrics": {
                    "bleu1": summary(16.5),
                    "rec_hit_rate": summary(0.2),
                    "kl": summary(0.3),
                    "rm_score": summary(1.0),  # not one of crs.json's metrics
                },
            },
        ],
        "vs_baseline": [
            {
                "arm": "ppo:gae",
                "baseline": "sft",
                "seeds": {
                    "bleu1": _vs(2.5, "ttest_p", 0.04),
                    "rec_hit_rate": _vs(0.1, "ttest_p", 0.2),
                },
                "prompts": {"flag/rec_hit": _vs(0.1, "wilcoxon_p", 0.01)},
            }
        ],
    }
    recommender = {
        "recommender/recall@1": 0.03,
        "recommender/recall@10": 0.146,
        "baseline_popularity/recall@1": 0.0126,
        "recommender/ndcg@10": 0.078,  # not reported
    }
    out = bench.summarise(compared, recommender)
    assert out["baseline"] == "sft"
    assert out["arms"]["sft"] == {
        "bleu1": {"mean": 14.0, "ci_lo": 13.5, "ci_hi": 14.5, "seeds": 3},
        "rec_hit_rate": {"mean": 0.1, "ci_lo": -0.4, "ci_hi": 0.6, "seeds": 3},
    }
    ppo = out["arms"]["ppo:gae"]
    assert set(ppo) == {"bleu1", "rec_hit_rate", "kl"}
    assert ppo["bleu1"]["vs_baseline_seeds"]["ttest_p"] == 0.04
    assert "vs_baseline_prompts" not in ppo["bleu1"]  # a corpus metric: seeds only
    assert ppo["rec_hit_rate"]["vs_baseline_prompts"]["wilcoxon_p"] == 0.01
    assert "vs_baseline_seeds" not in ppo["kl"]  # KL is to SFT already
    assert out["recommender"] == {
        "recommender/recall@1": 0.03,
        "recommender/recall@10": 0.146,
        "baseline_popularity/recall@1": 0.0126,
    }
    table = bench.markdown(out)
    assert table.splitlines()[0] == "| metric | sft | ppo:gae | ECR reference |"
    assert "| BLEU-1 (%) | 14.0 [13.5, 14.5] | 16.5 [16.0, 17.0]; Δ +2.5, p 0.04 | 14.25" in table
    assert (
        "| gold-hit rate | 0.100 [-0.400, 0.600] | 0.200 [-0.300, 0.700]; Δ +0.1, p 0.01 |" in table
    )
    assert bench.REFERENCE["bleu1"]["baseline"] == 14.25
    assert bench.REFERENCE["recall@1"]["rl_expected"] == [0.030, 0.035]


def test_crs_reads_the_recommender_metrics_at_the_compared_experiment(tmp_path, monkeypatch):
    bench = _load("crs")
    monkeypatch.chdir(tmp_path)
    compared = {"experiments": [{"name": "workspace", "rev": "workspace"}]}
    assert bench.recommender_metrics(compared) == {}  # not there: nothing invented
    (tmp_path / "metrics/full").mkdir(parents=True)
    (tmp_path / "metrics/full/train_recommender.json").write_text('{"recommender/recall@1": 0.03}')
    assert bench.recommender_metrics(compared) == {"recommender/recall@1": 0.03}


def test_plans_run_over_heads_params_or_what_the_last_experiment_left():
    """Each experiment starts from HEAD's params.yaml: the script rewrites the file, so it
    refuses when the file holds edits of the user's."""
    bench = _load("arms")
    head, left = "ppo:\n  seed: 0\n", "ppo:\n  seed: 2\n"
    bench.check_params(head, head, None)  # a clean workspace
    bench.check_params(left, head, left)  # what the previous experiment of a plan left
    with pytest.raises(SystemExit, match="neither HEAD's nor the last benchmark"):
        bench.check_params("ppo:\n  seed: 7\n", head, left)


def _summary(mean, n=3):
    """rlhf-lab compare's summary of ``n`` seeds (one seed has no interval)."""
    half = None if n == 1 else 0.5
    return {
        "mean": mean,
        "ci_lo": half and mean - half,
        "ci_hi": half and mean + half,
        "n": n,
    }


def test_docstring_result_has_the_protocols_columns_components_and_verdicts():
    bench = _load("docstring")
    compared = {
        "arms": [
            {"arm": "sft", "verdicts": [None], "metrics": {"reward": _summary(0.40, 1)}},
            {
                "arm": "ppo:gae",
                "verdicts": ["adjust", "reconsider", "proceed"],
                "metrics": {"reward": _summary(0.45), "bleu4": _summary(0.7), "kl": _summary(2)},
            },
        ],
        "vs_baseline": [
            {
                "arm": "ppo:gae",
                "baseline": "sft",
                "seeds": {"reward": _vs(0.05, "ttest_p", 0.2), "bleu4": _vs(0.1, "ttest_p", 0.5)},
                "prompts": {
                    "total_with_reference": _vs(0.05, "wilcoxon_p", 0.03),
                    "docstring/param_coverage": _vs(0.2, "wilcoxon_p", 0.001),
                    "reward_model": _vs(0.3, "wilcoxon_p", 0.01),
                },
            }
        ],
    }
    baseline = {"sft/reward/docstring/param_coverage": 0.33, "sft/rm_score": 0.6}
    out = bench.summarise(compared, baseline)
    # the rule reward's gain is per prompt (Wilcoxon); BLEU-4's, a corpus metric, per seed
    ppo = out["arms"]["ppo:gae"]
    assert ppo["reward"]["vs_baseline_prompts"]["wilcoxon_p"] == 0.03
    assert "vs_baseline_prompts" not in ppo["bleu4"] and "kl" not in ppo  # KL per reply: not here
    assert out["components"] == {
        "docstring/param_coverage": {
            "baseline": 0.33,
            "ppo:gae": {"mean_diff": 0.2, "ci_lo": -0.8, "ci_hi": 1.2, "wilcoxon_p": 0.001},
        }
    }
    assert out["verdicts"] == {"ppo:gae": ["adjust", "reconsider", "proceed"]}  # SFT has none
    assert out["proceed"] == {"ppo:gae": "1/3"}
    table = bench.markdown(out)
    # one seed: no interval; three: the interval and the gain with its p
    assert "| rule reward (trained on) | 0.400 | 0.450 [-0.050, 0.950]; Δ +0.05, p 0.03 |" in table
    assert "| 0.55 -> 0.65-0.70 |" in table
    assert "ppo:gae verdicts by seed: adjust, reconsider, proceed" in table
    assert "| param_coverage | 0.330 | +0.200 (0.001) |" in table


def test_shared_trunk_plan_and_result():
    bench = _load("shared_trunk")
    runs = bench.plan([0, 1], {"ppo.steps": "3"})
    # layout-major: train_critic reruns once; the separate critic (the default) first
    assert [n for n, _ in runs] == [
        "trunk-separate-s0",
        "trunk-separate-s1",
        "trunk-shared-s0",
        "trunk-shared-s1",
    ]
    assert runs[2][1] == {"critic.shared_trunk": "true", "ppo.seed": "0", "ppo.steps": "3"}
    compared = {
        "arms": [
            {"arm": "sft", "seeds": [None], "experiments": ["a"], "verdicts": [None]},
            {
                "arm": "ppo:gae",
                "seeds": [0, 1],
                "experiments": ["a", "b"],
                "verdicts": ["proceed", "adjust"],
                "metrics": {"rm_score": _summary(0.5, 2), "kl": _summary(2.0, 2)},
            },
        ],
        "vs_baseline": [{"arm": "ppo:gae", "baseline": "sft", "seeds": {}, "prompts": {}}],
    }
    train = {
        "a": {
            "val/explained_variance": 0.2,
            "time/total_rollout_s": 100,
            "time/total_update_s": 50,
        },
        "b": {
            "val/explained_variance": 0.4,
            "time/total_rollout_s": 120,
            "time/total_update_s": 70,
        },
        "other": {"val/explained_variance": 9.0},  # another layout's experiment
    }
    layout = bench.layout_summary(compared, train)
    assert layout["seeds"] == [0, 1] and layout["verdicts"] == ["proceed", "adjust"]
    assert set(layout["train_ppo"]) == {"a", "b"}
    assert layout["train_ppo_mean"]["val/explained_variance"] == pytest.approx(0.3)
    table = bench.markdown({"layouts": {"separate": layout}})
    assert "| RM score | 0.500 [0.000, 1.000] |" in table
    assert "| explained variance (last step) | 0.300 |" in table
    assert "| train_ppo rollout + update (s) | 170 |" in table
    assert "| verdicts by seed | proceed, adjust |" in table


def test_a_tagged_variant_is_a_plan_of_new_experiments():
    bench = _load("arms")
    runs = [("docstring-grpo-s2", {"ppo.seed": "2"})]
    assert bench.tagged(runs, None) == runs
    assert bench.tagged(runs, "rm0") == [("docstring-grpo-s2-rm0", {"ppo.seed": "2"})]


def test_e2e_runs_each_stage_after_the_stages_it_reads():
    """bench/e2e.py forces one stage at a time: a stage listed in dvc.yaml before a stage it
    reads from (score_with_llm before train_recommender, which writes data/grounded) must
    still run after it."""
    import yaml

    e2e = _load("e2e")
    stages = yaml.safe_load((BENCH.parent / "dvc.yaml").read_text())["stages"]
    order = e2e.pipeline_order(stages)
    assert sorted(order) == sorted(stages) and order[0] == "track_inputs"
    assert order.index("train_recommender") < order.index("score_with_llm")
    assert order[-2:] == ["train_ppo", "evaluate"]
    # file order where nothing constrains it; a cycle is an error
    toy = {
        "b": {"deps": ["x"], "outs": ["y"]},
        "a": {"outs": [{"x": {"cache": False}}]},
        "c": {"outs": ["z"]},
    }
    assert e2e.pipeline_order(toy) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cycle"):
        e2e.pipeline_order(
            {"a": {"deps": ["y"], "outs": ["x"]}, "b": {"deps": ["x"], "outs": ["y"]}}
        )
