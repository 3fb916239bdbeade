"""evaluate's outputs for people: the markdown report and the samples file.

Given an :class:`~rlhf_lab.evaluation.pipeline.EvalResult` (the baseline, every policy of
``eval.policies`` and the references):

- :func:`sample_rows` are ``reports/samples.jsonl``: every prompt with each model's reply and
  scores;
- :func:`render_report` is ``reports/report.md``: verdicts, headline table, significance,
  gates, component breakdowns, plots, each policy's five largest gains and losses side by
  side with the baseline, and the run's key params.

The PNGs it embeds and the DVC plot data are :mod:`rlhf_lab.evaluation.figures`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_lab.evaluation.figures import (
    COMPONENT_DELTA,
    COMPONENT_HISTS,
    REF,
    REWARD_HIST,
    label,
)
from rlhf_lab.evaluation.metrics import (
    CONFIDENCE,
    EXAMPLES_RM,
    EXAMPLES_RULE,
    FLAG_PREFIX,
    ranking_score,
    rule_reward_key,
)
from rlhf_lab.evaluation.pipeline import EvalResult
from rlhf_lab.evaluation.scoring import reference_of
from rlhf_lab.judge.rubrics import OVERALL
from rlhf_lab.reward_components import REWARD_MODEL, TOTAL, TOTAL_REF
from rlhf_lab.tasks.registry import TASKS

MAX_CELL_CHARS = 400
"""Replies and prompts longer than this are cut in the report's tables (samples.jsonl has
them in full)."""


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def _row_scores(result: EvalResult, who: str, i: int) -> dict[str, float | None]:
    out = result.outputs[who]
    scores: dict[str, float | None] = {}
    tables = dict(out.scores)
    if out.bertscore_f1 is not None:
        tables["bertscore_f1"] = out.bertscore_f1
    if out.judge is not None:
        tables.update({f"judge/{d}": v for d, v in out.judge.items()})
    # the task's 0/1 outcomes per reply (crs: rec_hit, rec, hallucinated), so compare can pair
    # them across experiments by prompt
    tables.update({f"{FLAG_PREFIX}{f}": v for f, v in out.task_flags.items()})
    for name, values in tables.items():
        v = float(values[i])
        if math.isfinite(v):
            scores[name] = round(v, 6)
    return scores


def sample_rows(result: EvalResult) -> list[dict[str, Any]]:
    """``reports/samples.jsonl`` rows: prompt, reference, every model's reply and scores.

    Per model ``<m>`` (baseline and policies): ``<m>_reply``, ``<m>_eos``, ``<m>_tokens`` and
    ``<m>_scores`` (``reward_model``, the rule components, ``bertscore_f1``, ``judge/*``, and
    ``flag/<name>`` for each task flag, 0 or 1);
    per policy ``<p>``: ``kl_<p>_<baseline>``. ``baseline`` and ``policies`` name the models,
    so a reader (``rlhf-lab compare``, ``analyze_rewards``) needs no params.
    """
    out = []
    for i, row in enumerate(result.rows):
        item: dict[str, Any] = {
            "id": row.get("id"),
            "prompt": row["prompt"],
            "reference": reference_of(row),
            "baseline": result.baseline,
            "policies": list(result.policies),
        }
        for m in result.models:
            o = result.outputs[m]
            item[f"{m}_reply"] = o.texts[i]
            item[f"{m}_eos"] = bool(o.eos[i]) if o.eos is not None else None
            item[f"{m}_tokens"] = int(o.n_tokens[i]) if o.n_tokens is not None else None
            item[f"{m}_scores"] = _row_scores(result, m, i)
        item["reference_scores"] = _row_scores(result, REF, i) if REF in result.outputs else {}
        for p in result.policies:
            item[f"kl_{p}_{result.baseline}"] = round(float(result.kl[p][i]), 6)
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and abs(x) < 10 ** (-digits):
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def _signed(x: Any, digits: int = 3) -> str:
    s = _fmt(x, digits)
    return f"+{s}" if isinstance(x, float) and math.isfinite(x) and x > 0 else s


def _pvalue(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(m: Mapping[str, Any], key: str, signed: bool = False) -> str:
    """``mean [lo, hi]`` for a metric with ``_ci_lo`` / ``_ci_hi`` siblings."""
    if key not in m:
        return "–"
    f = _signed if signed else _fmt
    lo, hi = m.get(f"{key}_ci_lo"), m.get(f"{key}_ci_hi")
    if lo is None or hi is None:
        return f(m[key])
    return f"{f(m[key])} [{_fmt(lo)}, {_fmt(hi)}]"


def cell(text: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Text made safe for one markdown table cell: pipes escaped, newlines as <br>, cut."""
    s = str(text) if text is not None else "–"
    # Control characters (a badly trained policy emits them) would garble the markdown.
    s = "".join(ch for ch in s if ch == "\n" or ch.isprintable())
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    s = s.replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("\n", "<br>") or "*(empty)*"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


HEADLINE: tuple[tuple[str, str, bool], ...] = (
    # (metric key without model prefix, label, has a bootstrap CI)
    ("rm_score", "reward model score (normalised), mean [95% CI]", True),
    (f"reward/{TOTAL_REF}", "rule reward (task components, 0–1), mean [95% CI]", True),
    (f"reward/{TOTAL}", "rule reward without BLEU (as for the references) [95% CI]", True),
    (f"judge/{OVERALL}", "judge overall (1–5)", False),
    ("bleu", "corpus BLEU (sacrebleu)", False),
    ("bleu1", "BLEU-1", False),
    ("bleu2", "BLEU-2", False),
    ("bleu4", "BLEU-4", False),
    ("rougeL", "ROUGE-L F1", False),
    ("meteor", "METEOR (exact + stem, no WordNet synonyms)", False),
    ("bertscore_f1", "BERTScore F1 [95% CI]", True),
    ("distinct1", "distinct-1", False),
    ("distinct2", "distinct-2", False),
    ("length", "mean length (words)", False),
    ("tokens", "mean length (tokens, EOS included)", False),
    ("eos_rate", "EOS rate (reply finished)", False),
    *(row for task in TASKS.values() for row in task.report_rows),
)
"""The headline table's rows, each shown when a model has the metric: the generic ones, then
every task's :attr:`~rlhf_lab.tasks.base.Task.report_rows`."""


def _headline(result: EvalResult) -> list[str]:
    m, base, pols = result.metrics, result.baseline, result.policies
    models = result.models
    rows = []
    for key, text, has_ci in HEADLINE:
        if not any(f"{w}/{key}" in m for w in models):
            continue
        if has_ci:
            vals = [_ci(m, f"{w}/{key}") for w in models]
            deltas = [_ci(m, f"delta/{p}/{key}", signed=True) for p in pols]
            ref = _ci(m, f"ref/{key}")
        else:
            vals = [_fmt(m.get(f"{w}/{key}")) for w in models]
            deltas = [_signed(m.get(f"delta/{p}/{key}")) for p in pols]
            ref = _fmt(m.get(f"ref/{key}"))
        rows.append([text, *vals, *deltas, ref])
    judge_dims = sorted(
        k.removeprefix(f"{base}/judge/")
        for k in m
        if k.startswith(f"{base}/judge/") and not k.endswith(f"/{OVERALL}")
    )
    for dim in judge_dims:
        key = f"judge/{dim}"
        rows.append(
            [
                f"judge {dim} (1–5)",
                *(_fmt(m.get(f"{w}/{key}")) for w in models),
                *(_signed(m.get(f"delta/{p}/{key}")) for p in pols),
                "–",
            ]
        )
    blank = [""] * len(models)
    vs = f"vs {label(base)}"
    for key, text in (
        ("win_rate_rm", f"win rate {vs}, reward model [95% CI]"),
        ("win_rate_rm_lc", f"length-controlled win rate {vs}, reward model"),
        ("win_rate_judge", f"win rate {vs}, judge overall [95% CI]"),
        ("kl", f"KL(policy ‖ {label(base)}), nats per reply [95% CI]"),
        ("kl_per_token", f"KL(policy ‖ {label(base)}), nats per token"),
    ):
        if any(f"delta/{p}/{key}" in m for p in pols):
            rows.append([text, *blank, *(_ci(m, f"delta/{p}/{key}") for p in pols), ""])
    header = [
        "metric",
        *(label(w) for w in models),
        *(f"{label(p)} − {label(base)}" for p in pols),
        "references",
    ]
    return _table(header, rows)


def _significance(result: EvalResult, policy: str, n_boot: int) -> list[str]:
    m, d = result.metrics, f"delta/{policy}/"
    name, base = label(policy), label(result.baseline)
    lines = []
    for prefix, what in (("rm", "reward model"), ("judge", "judge (overall rating)")):
        if f"{d}win_rate_{prefix}" not in m:
            continue
        p = m.get(f"{d}{prefix}_pvalue_wilcoxon")
        verdict = (
            "significant at the 0.05 level"
            if p is not None and p < 0.05
            else "not significant at the 0.05 level"
        )
        lines.append(
            f"- **{name} vs {base}, {what}**: {name} wins {_fmt(m[f'{d}win_rate_{prefix}'])} of "
            f"prompts (ties count half; {CONFIDENCE:.0%} paired bootstrap CI "
            f"[{_fmt(m.get(f'{d}win_rate_{prefix}_ci_lo'))}, "
            f"{_fmt(m.get(f'{d}win_rate_{prefix}_ci_hi'))}], {n_boot} resamples). "
            f"Wilcoxon signed-rank test, two-sided: p = {_pvalue(p)} ({verdict}); "
            f"paired t-test: p = {_pvalue(m.get(f'{d}{prefix}_pvalue_ttest'))}."
        )
    if f"{d}win_rate_rm_lc" in m:
        lines.append(
            f"- **{name} vs {base}, length-controlled**: {_fmt(m[f'{d}win_rate_rm_lc'])}, the "
            "reward-model win rate at equal reply length (logistic regression of the win on "
            "the token-length difference, AlpacaEval 2 LC simplified); far below the raw win "
            "rate means the gain is mostly longer replies."
        )
    if f"{d}rm_score_ci_lo" in m:
        lines.append(
            f"- **{name}**: mean reward-model gain {_ci(m, f'{d}rm_score', signed=True)} "
            f"({CONFIDENCE:.0%} paired bootstrap CI of the mean per-prompt difference)."
        )
    return lines


def _gates(result: EvalResult, policy: str) -> list[str]:
    rows = [
        [
            f"`{g.name}`",
            g.kind,
            _fmt(g.value) if g.value is not None else "n/a",
            _fmt(g.threshold),
            cell(g.rule),
            "pass" if g.passed else "**FAIL**",
        ]
        for g in result.verdicts[policy].gates
    ]
    return _table(["gate", "kind", "value", "threshold", "pass condition", "result"], rows)


def _breakdown(result: EvalResult, policy: str) -> list[str]:
    name, base = label(policy), label(result.baseline)
    rows = [
        [
            f"`{r['component']}`",
            _fmt(r["baseline"]),
            _fmt(r["policy"]),
            _fmt(r["ref"]),
            f"{_signed(r['delta'])} [{_fmt(r['delta_ci_lo'])}, {_fmt(r['delta_ci_hi'])}]",
            _pvalue(r["pvalue_wilcoxon"]),
        ]
        for r in result.breakdown[policy]
    ]
    header = ["component", base, name, "references", f"{name} − {base} [95% CI]", "Wilcoxon p"]
    return _table(header, rows)


def _last_user_turn(prompt: Sequence[Mapping[str, str]]) -> str:
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message.get("content", "")
    return prompt[-1].get("content", "") if prompt else ""


def _examples(result: EvalResult, policy: str, indices: Sequence[int], title: str) -> list[str]:
    lines = [f"### {title}", ""]
    if not indices:
        return [*lines, "None.", ""]
    base = result.baseline
    key = ranking_score(result.outputs[base])
    short = SCORE_SHORT.get(key, key)
    base_rm = result.outputs[base].scores[key]
    pol_rm = result.outputs[policy].scores[key]
    rows = []
    for rank, i in enumerate(indices, 1):
        row = result.rows[i]
        ref = reference_of(row)
        prompt = cell(_last_user_turn(row["prompt"]))
        if ref is not None:
            prompt += f"<br><br>*reference:* {cell(ref)}"
        rows.append(
            [
                f"{rank}. `{cell(row.get('id', i), 60)}`",
                prompt,
                f"{cell(result.outputs[base].texts[i])}<br>*{short} {_fmt(float(base_rm[i]))}*",
                f"{cell(result.outputs[policy].texts[i])}<br>*{short} {_fmt(float(pol_rm[i]))}*",
                _signed(float(pol_rm[i] - base_rm[i])),
            ]
        )
    header = [
        "#",
        "prompt (last user turn)",
        f"{label(base)} reply",
        f"{label(policy)} reply",
        f"Δ {short}",
    ]
    lines += _table(header, rows)
    return [*lines, ""]


def _verdict_line(result: EvalResult, policy: str) -> str:
    v = result.verdicts[policy]
    failed = ", ".join(f"`{name}`" for name in v.failed)
    tail = (
        f" — decided by `{v.decided_by}`; failing gate{'s' if len(v.failed) > 1 else ''}: {failed}."
        if failed
        else " — every gate passes."
    )
    return f"- **{label(policy)}: {v.decision.upper()}** ({v.rule} rule){tail}"


GENERIC_RULE = (
    "Generic rule, per policy: *proceed* when every gate passes; *adjust* when the hard gates "
    "(`reward_gain`, `significance`, `kl`, `bertscore`) pass and exactly one soft gate "
    "(`bleu_drop`, `distinct2_drop`, `eos_rate_drop`) fails; *reconsider* when a hard gate "
    "fails or more than one soft gate fails. The first failed hard gate, else soft gate, "
    "decides."
)
PROTOCOL_RULE = (
    "Protocol rule (`eval.gates.protocol`), per policy, on the mean rule reward, corpus BLEU-4 "
    "(0–1) and the mean KL per token: *reconsider* when the reward or BLEU-4 fell or the KL is "
    "above the reconsider bar (`reward_fell`, `bleu_fell`, `kl_far`); else *proceed* when the "
    "reward and BLEU-4 rose by their bars and the KL stayed below its bar; else *adjust* "
    "(`reward_stalled`, `kl`, `reward_gain`, `bleu_gain`: the first that failed decides)."
)


def _rules(result: EvalResult) -> list[str]:
    """The verdict rules in force, in words."""
    used = dict.fromkeys(v.rule for v in result.verdicts.values())
    return [PROTOCOL_RULE if rule == "protocol" else GENERIC_RULE for rule in used]


def _per_policy(result: EvalResult, policy: str, n_boot: int) -> list[str]:
    name, base = label(policy), label(result.baseline)
    return [
        f"## {name} vs {base}",
        "",
        _verdict_line(result, policy),
        "",
        *_significance(result, policy, n_boot),
        "",
        f"### Gates ({name})",
        "",
        *_gates(result, policy),
        "",
        f"### Reward components ({name})",
        "",
        *_breakdown(result, policy),
        "",
        *_examples(
            result,
            policy,
            result.gains[policy],
            f"{_count_word(result)} largest {name} gains over {base} ({_ranked_by(result)})",
        ),
        *_examples(
            result,
            policy,
            result.losses[policy],
            f"{_count_word(result)} largest {name} losses to {base} ({_ranked_by(result)})",
        ),
    ]


SCORE_SHORT = {REWARD_MODEL: "rm", TOTAL_REF: "reward", TOTAL: "reward"}
"""How an example's cell names the score it is ranked by."""


def _ranked_by(result: EvalResult) -> str:
    key = ranking_score(result.outputs[result.baseline])
    return "reward model" if key == REWARD_MODEL else "rule reward"


def _count_word(result: EvalResult) -> str:
    key = ranking_score(result.outputs[result.baseline])
    n = EXAMPLES_RM if key == REWARD_MODEL else EXAMPLES_RULE
    return {3: "Three", 5: "Five"}.get(n, str(n))


def _weakest(result: EvalResult, policy: str, n: int = 2) -> list[dict[str, Any]]:
    """The policy's ``n`` lowest-scoring rule components (in [0, 1]; the reward model's scale
    is not, so it is left out): where the next run has the most to gain."""
    rows = [r for r in result.breakdown[policy] if r["component"] != REWARD_MODEL]
    return sorted(rows, key=lambda r: r["policy"])[:n]


def _phase1(result: EvalResult) -> list[str]:
    """The Phase-1 table: rule reward of every model and the references, the gap to them, the
    reference metrics, the doctest pass rate, KL per token, the verdict and its gate; then
    each policy's weakest components. Empty for a task without a rule reward."""
    m, base = result.metrics, result.baseline
    if rule_reward_key(result.outputs[base]) is None:
        return []
    ref_total = m.get(f"{REF}/reward/{TOTAL}")
    rows = []
    for who in [*result.models, REF]:
        total = m.get(f"{who}/reward/{TOTAL}")
        gap = ref_total - total if ref_total is not None and total is not None else None
        v = result.verdicts.get(who)
        verdict = f"{v.decision} (`{v.decided_by}`)" if v is not None else "–"
        bleu = m.get(f"{who}/bleu4")
        rows.append(
            [
                label(who),
                _ci(m, f"{who}/reward/{TOTAL_REF}"),
                _ci(m, f"{who}/reward/{TOTAL}"),
                _signed(gap) if who != REF else "–",
                _fmt(bleu / 100.0) if bleu is not None else "–",
                _fmt(m.get(f"{who}/rougeL")),
                _fmt(m.get(f"{who}/meteor")),
                _fmt(m.get(f"{who}/doctest/with_example")),
                _fmt(m.get(f"{who}/doctest/pass_rate")),
                _fmt(m.get(f"delta/{who}/kl_per_token")),
                verdict,
            ]
        )
    header = [
        "model",
        "rule reward [95% CI]",
        "without BLEU",
        "gap to references",
        "BLEU-4 (0–1)",
        "ROUGE-L",
        "METEOR",
        "writes examples",
        "examples pass",
        "KL / token",
        "verdict (gate)",
    ]
    lines = ["## Phase 1", "", *_table(header, rows), ""]
    lines.append(
        "Rule reward: the weighted mean of the task's components (the total the policy was "
        "trained on); without BLEU it is comparable with the references, and the gap is the "
        "references' minus the model's. METEOR: exact + Porter-stem matching, no WordNet "
        "synonyms. *Writes examples*: replies, on the functions whose reference carries "
        f"examples ({_fmt(m.get(f'{base}/doctest/replies'))}), with an example that calls the "
        "function; *examples pass*: the share of those examples that pass in the sandbox."
    )
    lines.append("")
    for policy in result.policies:
        weak = ", ".join(
            f"`{r['component']}` {_fmt(r['policy'])}" for r in _weakest(result, policy)
        )
        lines.append(f"- **{label(policy)}**: weakest components {weak}.")
    return [*lines, ""]


def render_report(
    result: EvalResult,
    *,
    plots_rel: str,
    run_params: Mapping[str, Any],
    n_boot: int,
) -> str:
    """The markdown report. ``plots_rel``: the plots folder relative to the report."""
    m = result.metrics
    base = label(result.baseline)
    names = ", ".join(label(p) for p in result.policies)
    param_rows = [[f"`{k}`", cell(_fmt(x), 120)] for k, x in run_params.items()]
    lines = [
        f"# Evaluation: {names} vs {base}",
        "",
        "## Verdicts",
        "",
        *(_verdict_line(result, p) for p in result.policies),
        "",
        *_rules(result),
        "",
        f"Task `{result.task}`: {m.get('eval/num_prompts')} test prompts "
        f"({m.get('eval/num_references')} with a reference). Every model sampled with the same "
        f"settings and seed; X − {base} is X minus {base}.",
        "",
        *_phase1(result),
        "## Headline",
        "",
        *_headline(result),
        "",
        "The Wilcoxon signed-rank test is the headline test: it pairs each prompt's two replies "
        "and does not assume the score differences are normal; prompts where both scores are "
        "equal are dropped before ranking.",
        "",
        "Each policy's section below lists the mean per-reply score of each reward component "
        "(the reward model is normalised to the "
        "training prompts' mean 0, std 1; the rule components are in [0, 1]). Components that "
        "compare with the reference (BLEU) are not scored for the references themselves.",
        "",
        f"![reward-model score distribution]({plots_rel}/{REWARD_HIST})",
        "",
        f"![rule-component distributions]({plots_rel}/{COMPONENT_HISTS})",
        "",
        f"![policy - {base} per component]({plots_rel}/{COMPONENT_DELTA})",
        "",
    ]
    for policy in result.policies:
        lines += _per_policy(result, policy, n_boot)
    lines += ["## Run parameters", "", *_table(["param", "value"], param_rows), ""]
    return "\n".join(lines)


def flatten_params(sections: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested param sections as ``{"ppo.lora.r": 16, ...}`` for the report's params table."""
    out: dict[str, Any] = {}
    for key, value in sections.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = value
    return out
