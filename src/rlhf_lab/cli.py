"""The ``rlhf-lab`` command: one subcommand per DVC stage, each reading ``--params``.

    rlhf-lab --help
    rlhf-lab prepare_models --params params.yaml

Errors a user can fix (bad params, bad data, a model that can't be found) print one line and
exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from rlhf_lab.config import TASKS
from rlhf_lab.errors import ConfigError, RlhfLabError
from rlhf_lab.presets import PRESETS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="RLHF experiment stages (run them through `dvc repro`; each is also a command).",
)

STAGES = "Stages (dvc repro runs them in order)"
TOOLS = "Tools (read the pipeline's outputs)"
ARENA = "Arena (human feedback)"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"rlhf-lab {version('rlhf-lab')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """RLHF experiment stages (run them through `dvc repro`; each is also a command)."""


ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params file (YAML)", show_default=True)
]
DEFAULT_PARAMS = Path("params.yaml")

# `--help` lists the values and a wrong one is a one-line usage error (exit 2), before any
# params file or model is read.
TaskName = Literal[TASKS]  # type: ignore[valid-type]
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def _stage_lock(stage: str, package: str) -> contextlib.AbstractContextManager[None]:
    """A DVC stage's lock, held by one process per run: under ``accelerate launch`` every rank
    runs this command, and only rank 0 (which alone writes outputs) takes it. Commands that are
    not stages (tools, the arena) write only where the user points them or append under their
    own lock, so two of them may run at once."""
    from rlhf_lab.io import stage_lock

    rank = os.environ.get("RANK") or os.environ.get("PMI_RANK") or "0"
    if package != "stages" or rank != "0":
        return contextlib.nullcontext()
    return stage_lock(stage)


def _params_named(message: str, params_path: Path) -> str:
    """``message`` naming the params file the user gave: library code says ``params.yaml``
    (it does not know the path), which is wrong and misleading under ``--params other.yaml``."""
    if params_path == DEFAULT_PARAMS:
        return message
    # only the bare name: "/some/dir/params.yaml:3:" already names the file it means
    return re.sub(r"(?<![\w/.-])params\.yaml(?![\w/-]|\.\w)", lambda _: str(params_path), message)


UNWRITABLE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "read-only file system",
}
"""OSErrors a user fixes by making a folder writable; reported in one line, like a full disk."""


def _git_without_commit() -> bool:
    """Inside a git work tree that has no commit yet (dvclive's experiment record needs one;
    without it a stage would end in a long dvclive traceback)."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True)

    try:
        inside = git("rev-parse", "--is-inside-work-tree")
        return (
            inside.stdout.strip() == "true"
            and git("rev-parse", "-q", "--verify", "HEAD").returncode != 0
        )
    except OSError:  # no git: nothing to check
        return False


def finish_process_group() -> None:
    """End a finished distributed run (``accelerate launch``): destroy the process group, run
    the interpreter's exit handlers, then leave without C++ teardown.

    Destroying the group alone is not enough: a gloo worker thread still alive when the
    interpreter's C++ destructors run can abort a process whose work is done ("terminate called
    without an active exception", SIGABRT; torch's own atexit fix was abandoned upstream), and
    the launcher then reports the whole run failed. Every output is already written atomically
    by then, so skipping the C++ destructors loses nothing. One process: does nothing."""
    torch = sys.modules.get("torch")  # never imported here for a stage that did not need it
    if not (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        return
    torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()  # logging, trackers: what a normal exit would run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(stage: str, params_path: Path, package: str = "stages", **kwargs: Any) -> None:
    """Load params, then ``rlhf_lab.<package>.<stage>.main`` (stages; tools are not stages)."""
    from rlhf_lab import precision, tracking, ui
    from rlhf_lab.config import load_params
    from rlhf_lab.ui import quiet_libraries

    quiet_libraries()
    try:
        if package == "stages" and _git_without_commit():
            raise ConfigError(
                f"{stage}: this git repository has no commit yet; commit once (git add -A && "
                "git commit -m init), then run the stage: DVC and dvclive record the commit"
            )
        params = load_params(params_path)
        module = importlib.import_module(f"rlhf_lab.{package}.{stage}")
        precision.configure(params.models.mixed_precision)
        if package == "stages":  # the commands that log training curves
            tracking.configure(params.tracking, stage)
        with _stage_lock(stage, package):
            try:
                module.main(params, **kwargs)
            finally:
                tracking.close()
        finish_process_group()  # after the lock is released: it may not return
    except RlhfLabError as exc:
        ui.error(_params_named(str(exc), params_path))
        raise typer.Exit(2) from None
    except OSError as exc:
        # A full disk or a read-only folder is the user's to fix, and every output is written
        # atomically, so the previous outputs are still whole: say so in one line instead of
        # a traceback.
        where = f" writing {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            ui.error(
                f"{stage}: no space left on device{where}; its previous outputs are intact, "
                "free some space and run it again"
            )
        elif exc.errno in UNWRITABLE and exc.filename:
            from rlhf_lab.io import target_of

            ui.error(
                f"{stage}: {target_of(exc.filename)}: {UNWRITABLE[exc.errno]}; fix the "
                "permissions of it or its folder (or choose another path) and run it again"
            )
        else:
            raise
        raise typer.Exit(2) from None


@app.command("track_inputs", rich_help_panel=STAGES)
def track_inputs(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Fingerprint data.source, data.catalogue and local models into data/inputs/ for DVC."""
    _run("track_inputs", params)


@app.command("prepare_models", rich_help_panel=STAGES)
def prepare_models(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Materialise models/base/{policy,encoder} from embedded models, local dirs or hub ids."""
    _run("prepare_models", params)


@app.command("prepare_preference", rich_help_panel=STAGES)
def prepare_preference(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Normalise a data source into preference pairs and prompts; drop invalid rows to a file."""
    _run("prepare_preference", params)


@app.command("score_with_llm", rich_help_panel=STAGES)
def score_with_llm(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Score every candidate reply with the LLM judge (local model or OpenAI-compatible API)."""
    _run("score_with_llm", params)


@app.command("train_reward", rich_help_panel=STAGES)
def train_reward(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Train the Bradley–Terry reward model on preference pairs."""
    _run("train_reward", params)


@app.command("train_critic", rich_help_panel=STAGES)
def train_critic(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Warm-start the PPO critic (LoRA + value head) by regression on critic.target scores."""
    _run("train_critic", params)


@app.command("train_sft", rich_help_panel=STAGES)
def train_sft(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Supervised fine-tuning with LoRA, merged into models/sft (the baseline)."""
    _run("train_sft", params)


@app.command("train_dpo", rich_help_panel=STAGES)
def train_dpo(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """DPO (or IPO) on the preference pairs from the SFT policy, merged into models/dpo."""
    _run("train_dpo", params)


@app.command("train_ppo", rich_help_panel=STAGES)
def train_ppo(
    params: ParamsOpt = DEFAULT_PARAMS,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--fresh",
            help="--resume: must continue from checkpoints/train_ppo (fail if its inputs "
            "changed); --fresh: start at step 0. Default: continue a compatible checkpoint.",
        ),
    ] = None,
) -> None:
    """Online RL from the SFT policy (ppo.advantage: gae, grpo, rloo, reinforce_pp)."""
    _run("train_ppo", params, resume=resume)


@app.command("train_recommender", rich_help_panel=STAGES)
def train_recommender(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Fit the crs recommender; measure it and two baselines (other tasks: a skip marker)."""
    _run("train_recommender", params)


@app.command("evaluate", rich_help_panel=STAGES)
def evaluate(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Compare eval.baseline with every eval.policies arm; metrics, samples, plots, report."""
    _run("evaluate", params)


@app.command("generate", rich_help_panel=TOOLS)
def generate(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="a user message (repeatable)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="prompts: .jsonl prompt rows, or one per line"),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="base, sft, ppo, dpo or a model dir (repeat to compare)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="also write the replies as JSONL")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="sampling temperature (default: eval.temperature)")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="longest reply (default: eval.max_new_tokens)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed (default: eval.seed)")] = None,
    task: Annotated[
        TaskName | None,
        typer.Option("--task", help="task (default: task.name); docstring for --code"),
    ] = None,
    code: Annotated[
        list[str] | None,
        typer.Option("--code", help="docstring task: a .py file or a code snippet (repeatable)"),
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Sample replies from trained models for a prompt, a file of prompts or code (not a stage).

    With ``--task docstring --code FILE_OR_SNIPPET`` the models' docstrings for each function
    print side by side."""
    _run(
        "generate",
        params,
        package="tools",
        models=model or ["ppo"],
        prompts=prompt or [],
        file=file,
        out=out,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        task=task,
        code=code or [],
    )


@app.command("analyze_rewards", rich_help_panel=TOOLS)
def analyze_rewards(
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="prompt rows (default: the test prompts evaluate uses) or a source file in "
            "the task's format, e.g. ../shared/data/docstring/valid.jsonl.gz",
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(help="evaluate's reports/samples.jsonl: also break down SFT/PPO replies"),
    ] = None,
    task: Annotated[
        TaskName | None,
        typer.Option(help="a task with rule rewards: docstring or crs (default: task.name)"),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(help="rows checked (0 = all; from a source file: a fixed subsample)", min=0),
    ] = 0,
    out: Annotated[Path, typer.Option(help="folder for the summary, plots and plot data")] = Path(
        "plots/analyze_rewards"
    ),
    metrics: Annotated[Path, typer.Option(help="metrics file")] = Path(
        "metrics/analyze_rewards.json"
    ),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Reward-discrimination check: good vs deliberately bad replies, per reward component."""
    _run(
        "analyze_rewards",
        params,
        package="tools",
        input=input,
        samples=samples,
        task=task,
        limit=limit,
        out_dir=out,
        metrics_path=metrics,
    )


@app.command("compare", rich_help_panel=TOOLS)
def compare(
    experiments: Annotated[
        list[str] | None,
        typer.Argument(help="experiment names (or revs) from `dvc exp show`", show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="every evaluated experiment")] = False,
    all_commits: Annotated[
        bool,
        typer.Option(
            "--all-commits", "-A", help="experiments of every commit (dvc exp show -A), not HEAD's"
        ),
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write JSON here")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Evaluate's results across DVC experiments: arms × seeds, mean ± 95% CI, paired tests."""
    _run(
        "compare",
        params,
        package="tools",
        experiments=experiments or [],
        all_=all_,
        all_commits=all_commits,
        out=out,
    )


@app.command("arena", rich_help_panel=ARENA)
def arena(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="sft, ppo, dpo, base or a model dir (repeat; default: all trained)",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="port to serve on", min=1, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="address to bind (loopback only by default)")] = (
        "127.0.0.1"
    ),
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="allow a non-loopback --host such as 0.0.0.0")
    ] = False,
    prompts: Annotated[
        Path | None,
        typer.Option(help="held-out prompts to draw from (default: those evaluate uses)"),
    ] = None,
    votes: Annotated[Path, typer.Option(help="vote file (appended)")] = Path(
        "data/human/votes.jsonl"
    ),
    report: Annotated[
        bool, typer.Option("--report", help="don't serve: win rates, CIs and Elo from the votes")
    ] = False,
    metrics: Annotated[Path, typer.Option(help="--report's metrics file")] = Path(
        "metrics/arena.json"
    ),
    ratings: Annotated[
        Path, typer.Option(help="crs: rubric-score file (appended), beside the votes")
    ] = Path("data/human/ratings.jsonl"),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Blind side-by-side comparison page; votes become human preference pairs (not a stage)."""
    _run(
        "command",
        params,
        package="arena",
        models=model or [],
        host=host,
        port=port,
        allow_remote=allow_remote,
        prompts=prompts,
        votes=votes,
        show_report=report,
        metrics=metrics,
        ratings_path=ratings,
    )


@app.command("params", rich_help_panel=TOOLS)
def params_cmd(
    preset: Annotated[
        PresetName | None,
        typer.Option(help="a task preset (docs/tasks.md) or quick (docs/experiments.md)"),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(help="with --preset: the params file to apply it to (default: defaults)"),
    ] = None,
) -> None:
    """Print the default params.yaml, every key with its one-line doc (or a task preset)."""
    from rlhf_lab import ui
    from rlhf_lab.config import default_params_yaml

    if preset is None:
        typer.echo(default_params_yaml(), nl=False)
        return
    from rlhf_lab.presets import preset_yaml

    try:
        typer.echo(preset_yaml(preset, base), nl=False)
    except RlhfLabError as exc:
        ui.error(str(exc))
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
