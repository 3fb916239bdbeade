"""The openai backend against a real HTTP server on 127.0.0.1 (normal, slow, 5xx, malformed)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_lab.config import JudgeConfig
from rlhf_lab.judge import Judge
from rlhf_lab.judge.base import RatingRequest
from rlhf_lab.judge.cache import ScoreCache
from rlhf_lab.judge.openai_backend import OpenAIJudge, parse_response

SLOW_S = 1.0
"""How long the server sleeps on a [slow] item; tests use timeout_s well below it."""
_REPLY = re.compile(r"(?:next reply|written for it)(?: A)?:\n(.*?)\n\n", re.S)
_MARKER = re.compile(r"\[(slow|500|bad|400|conn)\]")


def rating_for(reply: str) -> int:
    """The fake judge's rating: 5 for 'good', 3 for 'ok', 2 otherwise."""
    return 5 if "good" in reply else 3 if "ok" in reply else 2


class FakeJudgeServer:
    """A chat-completions server whose answer depends on markers in the judged reply.

    In ``faulty`` mode ``[slow]`` sleeps past the client timeout, ``[500]`` answers 500,
    ``[bad]`` a non-JSON body, ``[400]`` a 400, ``[conn]`` closes the socket; ``healthy`` mode
    answers everything. Replies containing ``plain`` get no logprobs (the digit is parsed).
    """

    def __init__(self) -> None:
        self.mode = "faulty"
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                reply = (_REPLY.search(user) or re.search(r"(.*)", user)).group(1)
                with server.lock:
                    server.requests.append({"reply": reply, "body": body})
                    server.auth.append(self.headers.get("Authorization"))
                marker = _MARKER.search(reply)
                fault = marker.group(1) if marker and server.mode == "faulty" else None
                if fault == "slow":
                    time.sleep(SLOW_S)
                elif fault == "conn":
                    self.close_connection = True
                    self.connection.close()
                    return
                elif fault in ("500", "400"):
                    return self._send(int(fault), b'{"error": "nope"}')
                elif fault == "bad":
                    return self._send(200, b"<html>proxy error</html>")
                self._send(200, json.dumps(self._answer(body, reply)).encode())

            def _answer(self, body: dict, reply: str) -> dict:
                if "reply A:" in body["messages"][-1]["content"]:
                    text = "A" if "good" in reply else "B"
                else:
                    text = str(rating_for(reply))
                choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}}
                if body.get("logprobs") and "plain" not in reply:
                    # 90% on the answer, the rest on the next digit down: E = r - 0.1
                    alt = str(max(1, int(text) - 1)) if text.isdigit() else "AB"[text == "A"]
                    top = [
                        {"token": text, "logprob": -0.10536},
                        {"token": alt, "logprob": -2.302585},
                    ]
                    choice["logprobs"] = {
                        "content": [{"token": text, "logprob": -0.1, "top_logprobs": top}]
                    }
                return {"id": "x", "object": "chat.completion", "choices": [choice]}

            def _send(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self, needle: str) -> int:
        return sum(needle in r["reply"] for r in self.requests)


@pytest.fixture
def judge_server():
    server = FakeJudgeServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _backend(server: FakeJudgeServer, **kw) -> OpenAIJudge:
    opts = {"timeout_s": 0.3, "max_retries": 1, "concurrency": 4, "retry_backoff_s": 0.01}
    return OpenAIJudge(server.base_url, "fake-judge", **{**opts, **kw})


def _req(reply: str, dim: str = "helpfulness") -> RatingRequest:
    return RatingRequest("chat", dim, "User: hi", reply)


def test_parse_response_logprobs_content_and_failures():
    req = _req("x")
    top = [{"token": " 4", "logprob": -0.6931}, {"token": "5", "logprob": -0.6931}]
    body = {
        "choices": [
            {
                "message": {"content": "4"},
                "logprobs": {"content": [{"token": " 4", "logprob": -0.69, "top_logprobs": top}]},
            }
        ]
    }
    rating = parse_response(req, json.dumps(body).encode())
    assert rating.value == pytest.approx(4.5, abs=1e-3) and rating.mass == pytest.approx(1.0, 1e-3)
    plain = {"choices": [{"message": {"content": "Rating: 3/5"}}]}
    assert parse_response(req, json.dumps(plain).encode()).value == 3.0
    with pytest.raises(Exception, match="not a chat completion") as exc:
        parse_response(req, b"<html>")
    assert exc.value.kind == "malformed" and exc.value.retry
    words = {"choices": [{"message": {"content": "Great reply!"}}]}
    with pytest.raises(Exception, match="no rating") as exc:
        parse_response(req, json.dumps(words).encode())
    assert exc.value.kind == "no_rating" and not exc.value.retry
    pair = RatingRequest("chat", "pairwise", "c", "a", "b")
    assert (
        parse_response(
            pair, json.dumps({"choices": [{"message": {"content": "B"}}]}).encode()
        ).value
        == 0.0
    )


def test_server_modes_fail_by_kind_with_bounded_retries(judge_server, monkeypatch):
    monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", "sk-test-secret-42")
    backend = _backend(judge_server, api_key_env="RLHF_TEST_JUDGE_KEY")
    replies = [
        "good",
        "meh plain",
        "good [slow]",
        "good [500]",
        "good [bad]",
        "good [400]",
        "good [conn]",
    ]
    start = time.perf_counter()
    ratings = backend.rate([_req(r) for r in replies])
    elapsed = time.perf_counter() - start
    assert [r.error for r in ratings] == [
        None,
        None,
        "timeout",
        "http_5xx",
        "malformed",
        "http_4xx",
        "connection",
    ]
    assert ratings[0].value == pytest.approx(4.9, abs=1e-3)  # 0.9*5 + 0.1*4 from logprobs
    assert ratings[0].mass == pytest.approx(1.0, abs=1e-3)
    assert ratings[1].value == 2.0 and ratings[1].mass is None  # parsed digit, no logprobs
    # transient kinds retried once (max_retries=1), a 4xx never
    assert judge_server.count("[500]") == 2 and judge_server.count("[bad]") == 2
    assert judge_server.count("[slow]") == 2 and judge_server.count("[conn]") == 2
    assert judge_server.count("[400]") == 1
    assert "after 2 attempts" in ratings[3].detail
    # concurrency: two timed-out attempts of 0.3 s overlap the other requests
    assert elapsed < 2 * SLOW_S
    assert set(judge_server.auth) == {"Bearer sk-test-secret-42"}
    assert all("sk-test" not in (r.detail or "") for r in ratings)
    assert "sk-test" not in backend.judge_id and not hasattr(backend, "api_key")


def test_no_api_key_sends_no_header(judge_server, monkeypatch):
    monkeypatch.delenv("RLHF_TEST_JUDGE_KEY", raising=False)
    backend = _backend(judge_server, api_key_env="RLHF_TEST_JUDGE_KEY")
    assert backend.rate([_req("ok")])[0].value == pytest.approx(2.9, abs=1e-3)
    assert judge_server.auth == [None]


def test_connection_refused_is_counted(tmp_path):
    backend = OpenAIJudge("http://127.0.0.1:9/v1", "m", timeout_s=0.5, max_retries=0)
    [rating] = backend.rate([_req("good")])
    assert rating.error == "connection" and rating.value is None


def test_judge_cache_resumes_only_missing_items(judge_server, tmp_path):
    backend = _backend(judge_server)
    replies = ["good 1", "ok 2 [500]", "meh 3 [slow]", "good 4"]
    cache = ScoreCache(tmp_path, backend.judge_id, "sha")
    judge = Judge(backend, "chat", cache)
    first = judge.rate([_req(r) for r in replies])
    assert [r.ok for r in first] == [True, False, False, True]
    assert judge.stats.failures == Counter({"http_5xx": 1, "timeout": 1})
    judge_server.mode = "healthy"
    before = len(judge_server.requests)
    again = Judge(backend, "chat", ScoreCache(tmp_path, backend.judge_id, "sha"))
    second = again.rate([_req(r) for r in replies])
    assert [r.value for r in second] == pytest.approx([4.9, 2.9, 1.9, 4.9], abs=1e-3)
    asked = [r["reply"] for r in judge_server.requests[before:]]
    assert sorted(asked) == ["meh 3 [slow]", "ok 2 [500]"]
    assert again.stats.cached == 2 and again.stats.scored == 2


def test_from_config_and_validation():
    cfg = JudgeConfig(backend="openai", base_url="http://h:1/v1/", model="m", concurrency=3)
    backend = OpenAIJudge.from_config(cfg)
    assert backend.url == "http://h:1/v1/chat/completions" and backend.chunk_size == 12
    body = backend.body(_req("r"))
    assert body["max_tokens"] == 4 and body["temperature"] == 0.0 and body["top_logprobs"] == 10
    assert "logprobs" not in OpenAIJudge("http://h", "m", logprobs=False).body(_req("r"))
    with pytest.raises(ValueError, match="base_url is required"):
        JudgeConfig(backend="openai")
