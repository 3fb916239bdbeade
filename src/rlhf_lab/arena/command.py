"""arena: serve the blind comparison page, or report ratings from the votes (not a DVC stage).

    rlhf-lab arena                                   # models/sft + every trained policy
    rlhf-lab arena --model sft --model models/ppo --port 8765
    rlhf-lab arena --report                          # leaderboard -> metrics/arena.json

The page serves on 127.0.0.1 only; ``--host 0.0.0.0`` is refused unless ``--allow-remote`` is
given too (anyone who can reach the port could then vote). Replies are sampled as ``evaluate``
samples them: params ``eval.temperature`` and ``eval.max_new_tokens``, ``task.system_prompt``,
one fresh seed per comparison shared by both models. Votes go to ``data/human/votes.jsonl``;
``data.source: data/human/votes.jsonl`` makes ``prepare_preference`` train on them. With
``task.name: crs`` the page also asks for ECR's five rubric scores of each reply (1-5), appended
to ``data/human/ratings.jsonl``; ``--report`` averages them per policy with 95% CIs.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_lab import outputs, ui
from rlhf_lab.arena import ratings
from rlhf_lab.arena import scores as scores_lib
from rlhf_lab.arena import votes as votes_lib
from rlhf_lab.config import Params
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.io import write_json
from rlhf_lab.tasks.registry import get_task
from rlhf_lab.tools.generate import HELD_OUT_PROMPTS, MODEL_ALIASES, read_prompts

DEFAULT_MODELS = tuple(str(MODEL_ALIASES[m]) for m in ("sft", "ppo", "dpo"))
"""The baseline and every trained policy the pipeline makes; those that exist are served."""
METRICS = Path("metrics/arena.json")


def resolve_models(names: Sequence[str]) -> dict[str, Path]:
    """Model id -> directory; with no names, the default dirs that hold a model."""
    if not names:
        found = {
            Path(d).name: Path(d) for d in DEFAULT_MODELS if (Path(d) / "config.json").is_file()
        }
        if len(found) < 2:
            missing = next(d for d in DEFAULT_MODELS if Path(d).name not in found)
            raise DataError(
                f"the arena needs two models; found {', '.join(found) or 'none'} of "
                f"{', '.join(DEFAULT_MODELS)}: for {missing}, {outputs.how_to_get(missing)} "
                "(or give --model twice)"
            )
        return found
    out: dict[str, Path] = {}
    for name in names:
        path = MODEL_ALIASES.get(name, Path(name))
        if not (path / "config.json").is_file():
            raise DataError(
                f"--model {name!r}: {path} holds no model (config.json): {outputs.how_to_get(path)}"
            )
        out[name if name in MODEL_ALIASES else str(path)] = path
    if len(out) < 2:
        raise DataError("the arena needs at least two different --model")
    return out


def check_host(host: str, allow_remote: bool) -> None:
    """Loopback only, unless the user says otherwise in so many words."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ConfigError(
            f"--host {host}: serves the arena beyond this machine, where anyone who reaches "
            "the port can read replies and vote; add --allow-remote if that is what you want"
        )


class PolicyReplier:
    """Samples one reply from a model directory; each model is loaded once, on first use."""

    def __init__(self, dirs: dict[str, Path], params: Params) -> None:
        self.dirs = dirs
        self.system_prompt = params.task.system_prompt
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def __call__(
        self, model_id: str, prompt: list[dict[str, str]], settings: dict[str, Any]
    ) -> str:
        from rlhf_lab import generation
        from rlhf_lab.evaluation.sampling import load_policy

        with self._lock:
            if model_id not in self._loaded:
                self._loaded[model_id] = load_policy(self.dirs[model_id])
            model, tok = self._loaded[model_id]
            [sample] = generation.generate(
                model,
                tok,
                [prompt],
                max_new_tokens=settings["max_new_tokens"],
                temperature=settings["temperature"],
                batch_size=1,
                seed=settings["seed"],
                system_prompt=self.system_prompt,
                desc=f"arena {model_id}",
            )
        return sample.text


def report(
    votes_path: Path,
    metrics_path: Path,
    n_boot: int,
    seed: int,
    scores_path: Path = scores_lib.SCORES_PATH,
    prompts_path: Path = HELD_OUT_PROMPTS,
) -> dict[str, Any]:
    """The leaderboard of the vote file (and the rubric scores beside it), written as flat
    metrics and printed; with the held-out prompts file, how many of them have votes."""

    found, bad = votes_lib.read_votes(votes_path)
    if not found:
        raise DataError(f"{votes_path}: no votes yet; run `rlhf-lab arena` and vote first")
    m = ratings.summary(found, n_boot=n_boot, seed=seed)
    m["arena/unreadable_lines"] = len(bad)
    if prompts_path.is_file():
        m.update(ratings.prompt_coverage(found, read_prompts(prompts_path)))
    scored, bad_scores = scores_lib.read_scores(scores_path)
    if scored or bad_scores:
        m.update(scores_lib.summary(scored, n_boot=n_boot, seed=seed))
        m["arena/unreadable_score_lines"] = len(bad_scores)
    write_json(metrics_path, m)
    board = ratings.leaderboard(m)
    rows: dict[str, str] = {
        "votes (pairs / ties / both bad / identical)": (
            f"{m['arena/votes']} ({m['arena/pairs']} / {m['arena/ties']} / "
            f"{m['arena/both_bad']} / {m['arena/identical']})"
        ),
        "A (left) wins of decisive votes [95% CI]": board["left_wins"],
        "votes per pair": " · ".join(f"{p}: {n}" for p, n in board["pairs"].items()) or "none",
    }
    if "arena/prompts" in m:
        rows[f"held-out prompts voted on ({prompts_path})"] = (
            f"{m['arena/prompts_voted']} of {m['arena/prompts']}"
        )
    for row in board["models"]:
        rows[f"{row['model']}: Elo [95% CI]"] = f"{row['elo']} · {row['games']} games"
        rows[f"{row['model']}: win rate [95% CI]"] = row["win_rate"]
        for rubric, text in row["human"].items():
            rows[f"{row['model']}: {rubric.replace('_', ' ')} (1-5)"] = text
    if bad:
        rows["unreadable lines (skipped)"] = ", ".join(map(str, bad[:10]))
    if bad_scores:
        rows[f"unreadable lines of {scores_path} (skipped)"] = ", ".join(map(str, bad_scores[:10]))
    ui.summary(f"arena ({votes_path})", rows)
    return m


def main(
    params: Params,
    *,
    models: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_remote: bool = False,
    prompts: Path | None = None,
    votes: Path = votes_lib.VOTES_PATH,
    show_report: bool = False,
    metrics: Path = METRICS,
    ratings_path: Path = scores_lib.SCORES_PATH,
) -> None:
    prompts = prompts or HELD_OUT_PROMPTS
    if show_report:
        report(votes, metrics, params.eval.n_boot, params.eval.seed, ratings_path, prompts)
        return
    check_host(host, allow_remote)
    import uvicorn

    from rlhf_lab.arena.app import LOOPBACK_HOSTS, Arena, create_app

    dirs = resolve_models(models)
    held_out = read_prompts(prompts) if prompts.is_file() else []
    settings = {
        "temperature": params.eval.temperature,
        "max_new_tokens": params.eval.max_new_tokens,
        "system_prompt": params.task.system_prompt,
    }
    arena = Arena(
        list(dirs),
        PolicyReplier(dirs, params),
        votes,
        held_out,
        settings,
        scores_path=ratings_path,
        # ECR's human evaluation is of movie-recommendation replies: crs prompts only.
        rubrics=tuple(d.name for d in get_task(params.task.name).human_rubrics),
    )
    app = create_app(arena, LOOPBACK_HOSTS if not allow_remote else ["*"])
    ui.console.print(
        f"arena: {', '.join(dirs)} · {len(held_out)} held-out prompts · votes -> {votes}\n"
        f"open http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/  (Ctrl-C to stop)",
        markup=False,  # model names and paths are the user's text, not styles
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
