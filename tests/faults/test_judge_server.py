"""A misbehaving OpenAI-compatible judge server on 127.0.0.1 against the openai backend, the
Judge and the real score_with_llm CLI: impossible bodies, answers without a rating, a trickle,
a huge body, redirects to another port, a bad API key, credentials in base_url, a corrupt
cache."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.errors import ConfigError
from rlhf_lab.judge import Judge
from rlhf_lab.judge.base import RatingRequest
from rlhf_lab.judge.cache import ScoreCache
from rlhf_lab.judge.openai_backend import MAX_BODY_BYTES, REASK_MAX_TOKENS, OpenAIJudge

KEY = "sk-fault-secret-31"
_MARKER = re.compile(r"\[(\w+)\]")
_REASKED = "Answer with the single"


def _completion(content: object, logprobs: object = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def _lp(*alts: tuple[str, float]) -> dict:
    top = [{"token": t, "logprob": lp} for t, lp in alts]
    return {"content": [{"token": alts[0][0], "logprob": alts[0][1], "top_logprobs": top}]}


BAD_BODIES = {
    "logprob1000": _completion("4", _lp(("4", 1000.0))),
    "content5": _completion(5),
    "lpcontent5": _completion("4", {"content": 5}),
    "top7": _completion("4", {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": 7}]}),
    "positive": _completion("4", _lp(("4", 0.5), ("5", 0.5))),
    "overflow": _completion("4", _lp(("5", 709.0), ("4", 709.0))),
    "infinity": _completion("4", _lp(("4", float("inf")))),
}
"""Well-formed JSON chat completions with impossible types or values; the same every time."""


class MisbehavingServer:
    """Chat completions whose answer depends on a ``[marker]`` in the judged reply.

    No marker: a rating from logprobs (90% on 5 for "good" or 2, 10% on 1). Markers:
    :data:`BAD_BODIES`; ``sorry`` (no digit, but a bare digit when re-asked); ``wink`` (never a
    digit); ``trickle`` / ``tricklehead`` (body / headers one byte per 20 ms); ``huge`` (a
    declared 64 MiB body) / ``stream`` (2 MiB of blanks, no length); ``r302``, ``r303``,
    ``r307`` (redirect to ``redirect_to``).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.hung_up: list[str] = []
        """Markers whose reply the client stopped reading before it was complete."""
        self.redirect_to = ""
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                marker = (_MARKER.search(user) or re.match("()", "")).group(1)
                with server.lock:
                    server.requests.append({"marker": marker, "body": body, "path": self.path})
                    server.auth.append(self.headers.get("Authorization"))
                try:
                    self._answer(marker, body, user)
                except (BrokenPipeError, ConnectionResetError):
                    with server.lock:
                        server.hung_up.append(marker)

            def _answer(self, marker: str, body: dict, user: str) -> None:
                if marker in BAD_BODIES:
                    return self._send(200, json.dumps(BAD_BODIES[marker]).encode())
                if marker in ("r302", "r303", "r307"):
                    self.send_response(int(marker[1:]))
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if marker == "sorry":
                    text = "4" if _REASKED in user else "I'm sorry for"
                    return self._send(200, json.dumps(_completion(text)).encode())
                if marker == "wink":
                    return self._send(200, json.dumps(_completion("😉 Great")).encode())
                if marker in ("trickle", "tricklehead"):
                    data = json.dumps(_completion("4")).encode() + b" " * 400
                    head = (
                        f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n"
                        "Content-Type: application/json\r\n\r\n"
                    ).encode()
                    slow = head + data if marker == "tricklehead" else data
                    if marker == "trickle":
                        self.wfile.write(head)
                    for i in range(len(slow)):
                        self.wfile.write(slow[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.02)
                    return None
                if marker == "huge":
                    self.send_response(200)
                    self.send_header("Content-Length", str(64 << 20))
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b" " * (1 << 20))
                    return None
                if marker == "stream":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b" " * (2 * MAX_BODY_BYTES))
                    self.wfile.write(json.dumps(_completion("4")).encode())
                    return None
                reply = user.split("\n\n")[-2] if "\n\n" in user else user
                rating = 5 if "good" in reply else 2
                answer = _completion(str(rating), _lp((str(rating), -0.10536), ("1", -2.302585)))
                return self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self, marker: str) -> int:
        return sum(r["marker"] == marker for r in self.requests)


def _serve(server: MisbehavingServer | None = None) -> Iterator[MisbehavingServer]:
    server = server or MisbehavingServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def server():
    yield from _serve()


@pytest.fixture
def other_server():
    yield from _serve()


def _backend(server: MisbehavingServer, **kw) -> OpenAIJudge:
    opts = {"timeout_s": 0.5, "max_retries": 2, "retry_backoff_s": 0.01, "concurrency": 4}
    return OpenAIJudge(server.base_url, "m", api_key_env="RLHF_FAULT_KEY", **{**opts, **kw})


def _req(reply: str, dim: str = "helpfulness") -> RatingRequest:
    return RatingRequest("chat", dim, "User: hi", reply)


@pytest.mark.parametrize("marker", sorted(BAD_BODIES))
def test_impossible_body_is_an_invalid_item_asked_twice_never_a_crash(server, marker, monkeypatch):
    monkeypatch.setenv("RLHF_FAULT_KEY", KEY)
    [rating] = _backend(server).rate([_req(f"good [{marker}]")])
    assert (rating.value, rating.error) == (None, "invalid")
    assert "asked again for a bare answer" in rating.detail and KEY not in rating.detail
    # deterministic: not retried (max_retries=2), only re-asked once for a bare digit
    assert server.count(marker) == 2
    assert server.requests[-1]["body"]["max_tokens"] == REASK_MAX_TOKENS


def test_no_rating_is_reasked_then_given_the_flagged_neutral_score_uncached(server, tmp_path):
    backend = _backend(server)
    sorry, wink = backend.rate([_req("x [sorry]"), _req("x [wink]")])
    assert (sorry.value, sorry.reasked, sorry.fallback) == (4.0, True, None)
    assert (wink.value, wink.error) == (None, "no_rating") and "😉 Great" in wink.detail

    cache = ScoreCache(tmp_path, backend.judge_id, "sha")
    judge = Judge(backend, "chat", cache, neutral_fallback=True)
    ratings = judge.rate([_req("good"), _req("x [sorry]"), _req("x [wink]"), _req("y [top7]")])
    assert [r.value for r in ratings] == pytest.approx([4.6, 4.0, 3.0, 3.0], abs=1e-3)
    assert [r.fallback for r in ratings] == [None, None, "no_rating", "invalid"]
    assert judge.stats.fallbacks == Counter({"no_rating": 1, "invalid": 1})
    assert judge.stats.scored == 2 and judge.stats.reasked == 1 and not judge.stats.failures
    # the neutral score is not the judge's answer: never cached, so a later run asks again
    assert len(ScoreCache(tmp_path, backend.judge_id, "sha")) == 2
    pair = RatingRequest("chat", "pairwise", "User: hi", "a [wink]", "b")
    assert Judge(backend, "chat", neutral_fallback=True).rate([pair])[0].value == 0.5


@pytest.mark.parametrize("marker", ["trickle", "tricklehead"])
def test_trickling_server_times_out_on_the_whole_request(server, marker):
    # every byte arrives well within the socket timeout; only a whole-request bound stops it
    [rating] = _backend(server, max_retries=0).rate([_req(f"good [{marker}]")])
    assert (rating.value, rating.error) == (None, "timeout")
    for _ in range(500):  # wait for the server thread to notice the client left
        if server.hung_up:
            break
        time.sleep(0.02)
    assert server.hung_up == [marker]  # the client closed before the last byte


@pytest.mark.parametrize("marker", ["huge", "stream"])
def test_huge_body_is_refused_past_the_cap(server, marker):
    [rating] = _backend(server, max_retries=0).rate([_req(f"good [{marker}]")])
    assert (rating.value, rating.error) == (None, "malformed")
    assert f"over {MAX_BODY_BYTES} bytes" in rating.detail


@pytest.mark.parametrize("status", [302, 303, 307])
def test_redirect_is_not_followed_and_the_key_never_leaves(
    server, other_server, status, monkeypatch
):
    monkeypatch.setenv("RLHF_FAULT_KEY", KEY)
    target = f"{other_server.base_url}/chat/completions"
    # 303 also carries user info in its Location: it must not be printed either
    server.redirect_to = target.replace("//", "//user:pw@") if status == 303 else target
    [rating] = _backend(server).rate([_req(f"good [r{status}]")])
    assert (rating.value, rating.error) == (None, "redirect")
    assert f"HTTP {status}" in rating.detail and "judge.base_url" in rating.detail
    assert KEY not in rating.detail and "pw" not in rating.detail
    assert server.count(f"r{status}") == 1  # not retried: a params problem
    assert other_server.requests == [] and other_server.auth == []


def test_api_key_whitespace_is_stripped_and_a_broken_key_is_never_printed(server, monkeypatch):
    monkeypatch.setenv("RLHF_FAULT_KEY", KEY + "\n")
    assert _backend(server).rate([_req("good")])[0].value == pytest.approx(4.6, abs=1e-3)
    assert server.auth == [f"Bearer {KEY}"]
    monkeypatch.setenv("RLHF_FAULT_KEY", "sk-fault\nsecret-31")
    with pytest.raises(ConfigError, match=r"^\$RLHF_FAULT_KEY: the API key has whitesp") as exc:
        _backend(server).rate([_req("good")])
    assert "secret-31" not in str(exc.value) and len(server.requests) == 1


def test_environment_proxy_is_still_used_without_redirects(server, monkeypatch):
    # http.client replaced urllib (no redirects, a whole-request deadline): keep its proxies
    for var in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base_url.removesuffix("/v1"))
    backend = OpenAIJudge("http://judge.invalid:8000/v1", "m", timeout_s=2.0, max_retries=0)
    assert backend.rate([_req("good")])[0].value == pytest.approx(4.6, abs=1e-3)
    assert server.requests[0]["path"] == "http://judge.invalid:8000/v1/chat/completions"


# --- the real score_with_llm CLI --------------------------------------------------------------


def _pair(i: int, chosen: str, rejected: str, source: str = "human") -> dict:
    prompt = [{"role": "user", "content": f"question {i}"}]
    return {
        "id": f"p{i}",
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "label_source": source,
        "meta": {},
    }


def _run(root: Path, rows: list[dict], judge: dict) -> tuple[int, str]:
    (root / "data/preference").mkdir(parents=True, exist_ok=True)
    (root / "data/preference/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "params.yaml").write_text(yaml.safe_dump({"judge": judge}))
    result = CliRunner().invoke(app, ["score_with_llm", "--params", str(root / "params.yaml")])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _judge(server: MisbehavingServer, **kw) -> dict:
    return {
        "backend": "openai",
        "base_url": server.base_url,
        "model": "m",
        "api_key_env": "RLHF_FAULT_KEY",
        "timeout_s": 0.5,
        "max_retries": 1,
        "retry_backoff_s": 0.01,
        **kw,
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_stage_passes_with_deterministic_failures_as_flagged_neutral_scores(
    server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHF_FAULT_KEY", KEY)
    rows = [
        _pair(0, "good a", "meh a"),
        _pair(1, "good b [sorry]", "meh b"),
        _pair(2, "good c [wink]", "meh c"),
        _pair(3, "good d", "meh d [positive]"),
        _pair(4, "good e", "meh e"),
    ]
    # default max_failure_fraction 0: transient failures would fail the stage, these don't
    code, out = _run(tmp_path, rows, _judge(server, max_fallback_fraction=0.25))
    assert code == 0, out
    m = json.loads((tmp_path / "metrics/full/score_with_llm.json").read_text())
    assert m["judge/items"] == 20 and m["judge/failures"] == 0
    assert m["judge/fallback"] == 4  # 2 replies x 2 dimensions
    assert m["judge/fallback/no_rating"] == 2 and m["judge/fallback/invalid"] == 2
    assert m["judge/reasked"] == 2 and m["judge/items_scored"] == 16
    # agreement over the 3 pairs the judge really scored, not the 2 with a neutral score
    assert m["judge/agreement_pairs"] == 3 and m["judge/agreement"] == 1.0
    scored = _jsonl(tmp_path / "data/scored/train.jsonl")
    assert [r.get("fallback") for r in scored] == [
        None,
        None,
        ["chosen/helpfulness", "chosen/harmlessness"],
        ["rejected/helpfulness", "rejected/harmlessness"],
        None,
    ]
    assert scored[2]["scores"]["chosen"] == {
        "helpfulness": 3.0,
        "harmlessness": 3.0,
        "overall": 3.0,
    }
    assert scored[1]["scores"]["chosen"]["overall"] == 4.0  # rated when re-asked
    failures = _jsonl(tmp_path / "data/scored/failures.jsonl")
    assert Counter((f["id"], f["kind"], f["fallback"]) for f in failures) == Counter(
        {("p2", "no_rating", 3.0): 2, ("p3", "invalid", 3.0): 2}
    )
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "Infinity" not in text and "NaN" not in text and KEY not in text, path

    # over judge.max_fallback_fraction (0.05 by default): exit 2, one line naming the kinds
    code, out = _run(tmp_path, rows, _judge(server))
    assert code == 2 and "Traceback" not in out
    line = " ".join(out.split())
    assert "4 of 20 judge items got the neutral score (no_rating 2, invalid 2" in line
    assert "judge.max_fallback_fraction=0.05" in line and "a re-run gets the same" in line


def test_stage_error_says_which_kind_failed_and_what_helps(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [_pair(0, "good a [r302]", "meh a [trickle]")]
    code, out = _run(tmp_path, rows, _judge(server, max_retries=0))
    assert code == 2 and "Traceback" not in out
    line = " ".join(out.split())
    assert "4 of 4 judge items failed (timeout 2, redirect 2;" in line
    assert "a re-run scores only the missing items" in line
    assert "check judge.base_url, judge.model and the key" in line


def test_stage_rejects_credentials_in_base_url_and_a_broken_key_unprinted(
    server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    rows = [_pair(0, "good", "meh")]
    url = server.base_url.replace("http://", "http://admin:hunter2@")
    code, out = _run(tmp_path, rows, _judge(server, base_url=url))
    assert code == 2 and "hunter2" not in out and "Traceback" not in out
    assert "judge.base_url must not hold credentials" in out and "judge.api_key_env" in out
    assert server.requests == [] and not (tmp_path / "data/scored").exists()

    monkeypatch.setenv("RLHF_FAULT_KEY", "sk-fault-\tsecret-31\n")
    code, out = _run(tmp_path, rows, _judge(server))
    assert code == 2 and "secret-31" not in out and "Traceback" not in out
    assert "$RLHF_FAULT_KEY: the API key has whitespace" in " ".join(out.split())
    assert server.requests == []


def test_corrupt_cache_records_are_skipped_counted_and_reasked(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [_pair(i, f"good {i}", f"meh {i}") for i in range(4)]
    assert _run(tmp_path, rows, _judge(server))[0] == 0
    [cache] = (tmp_path / ".cache/judge").glob("*.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == 16
    recs = [json.loads(x) for x in lines]
    corrupt = [
        {**recs[0], "value": "4.9"},
        {**recs[1], "mass": "high"},
        {**recs[2], "key": 7},
        [recs[3]["key"], 4.9],
        {**recs[4], "value": 1e308},
        {**recs[5], "mass": 7.0},
        {**recs[6], "value": True},
    ]
    cache.write_text("".join(json.dumps(r) + "\n" for r in [*corrupt, *recs[7:]]))
    before = len(server.requests)
    code, out = _run(tmp_path, rows, _judge(server))
    assert code == 0, out
    m = json.loads((tmp_path / "metrics/full/score_with_llm.json").read_text())
    assert m["judge/cache_skipped_lines"] == 7
    assert m["judge/items_new"] == 7 and m["judge/items_cached"] == 9
    assert len(server.requests) - before == 7  # exactly the unreadable ones, asked again
