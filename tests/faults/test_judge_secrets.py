"""A judge server that echoes the request back — headers, key and body — in a 401 message, in
a 200 answer's text, and one that rate-limits: the key never reaches a file or a printed line,
a 429 is advised as rate limiting and its ``Retry-After`` is honoured (bounded), and a deeply
nested answer under the size cap is a failed item, not a crash."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhf_lab.errors import REDACTED, scrub
from rlhf_lab.io import failed_output
from rlhf_lab.judge.base import RatingRequest
from rlhf_lab.judge.openai_backend import MAX_BACKOFF_S, OpenAIJudge, retry_after_s
from tests.faults.test_judge_server import (
    MisbehavingServer,
    _completion,
    _judge,
    _pair,
    _run,
    _serve,
)

KEY = "sk-echo-Secret-9x7Q"
_MARKER = re.compile(r"\[(\w+)\]")
_RATING_DIGIT = re.compile(r"(?<!\d)[1-5](?!\d)")


class EchoServer(MisbehavingServer):
    """``[echo401]``: 401 whose message is the request; ``[echo200]``: a 200 whose answer text
    is the request (its rating digits masked, so no rating is found and the text is kept as the
    failure detail); ``[r429]``: 429 with ``Retry-After: 7``; ``[deep]``: a 200 body nested
    50,000 levels (~100 KB, under the 1 MiB cap); anything else: a rating of 4."""

    def __init__(self) -> None:
        super().__init__()  # the server plumbing; the answers are this class's
        self.markers: list[str] = []
        server = self

        class Handler(self.httpd.RequestHandlerClass):  # type: ignore[name-defined,misc]
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                user = json.loads(raw)["messages"][-1]["content"]
                marker = (_MARKER.search(user) or re.match("()", "")).group(1)
                server.markers.append(marker)
                auth = self.headers.get("Authorization") or ""
                echo = (
                    f"token={auth.split()[-1] if auth else ''} headers={dict(self.headers)!r} "
                    f"body={raw.decode()}"
                )
                if marker == "echo401":
                    msg = {"error": {"message": f"invalid key in request: {echo}"}}
                    return self._send(401, json.dumps(msg).encode())
                if marker == "echo200":
                    text = _RATING_DIGIT.sub("#", echo)
                    return self._send(200, json.dumps(_completion(text)).encode())
                if marker == "r429":
                    self.send_response(429)
                    self.send_header("Retry-After", "7")
                    self.send_header("Content-Length", str(len(echo.encode())))
                    self.end_headers()
                    return self.wfile.write(echo.encode())
                if marker == "deep":
                    return self._send(200, b"[" * 50_000 + b"]" * 50_000)
                return self._send(200, json.dumps(_completion("4")).encode())

        self.httpd.RequestHandlerClass = Handler


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    yield from _serve(EchoServer())  # type: ignore[misc]


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Waits between retries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr("rlhf_lab.judge.openai_backend.time.sleep", waits.append)
    return waits


def _files_holding(root: Path, needle: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle.encode() in p.read_bytes()
    ]


def test_echoed_key_reaches_no_file_and_no_printed_line(echo, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHF_FAULT_KEY", KEY)
    rows = [_pair(0, "good a [echo401]", "meh a [echo200]"), _pair(1, "good b", "meh b")]
    code, out = _run(tmp_path, rows, _judge(echo, max_retries=0, max_fallback_fraction=1.0))
    assert code == 2 and "Traceback" not in out  # the 401s fail the stage
    assert echo.markers.count("echo401") == 2 and echo.markers.count("echo200") == 4
    # A failed stage changes none of its outputs: what it found goes where its error points.
    found = tmp_path / failed_output("score_with_llm", "data/scored") / "failures.jsonl"
    failures = [json.loads(x) for x in found.open()]
    details = {f["kind"]: f["detail"] for f in failures}
    # the server's words are kept (they say what went wrong), the key and header value are not
    assert "invalid key in request" in details["http_4xx"]
    assert f"token={REDACTED}" in details["http_4xx"]
    assert f"token={REDACTED}" in details["no_rating"]
    captured = capfd.readouterr()
    for text in (out, captured.out, captured.err):
        assert KEY not in text
    assert _files_holding(tmp_path, KEY) == []
    assert _files_holding(tmp_path, "Bearer sk-") == []


def test_scrub_removes_the_key_header_values_and_bearer_tokens():
    from rlhf_lab.errors import register_secret

    register_secret(KEY)
    text = f'{{"Authorization": "Bearer abcdefgh123", "x-key": "{KEY}"}} authorization=tok.en42'
    clean = scrub(text)
    assert KEY not in clean and "abcdefgh123" not in clean and "tok.en42" not in clean
    assert scrub("the bearer of bad news") == "the bearer of bad news"


def test_429_is_rate_limiting_and_retry_after_is_honoured_and_bounded(echo, sleeps):
    judge = OpenAIJudge(echo.base_url, "m", max_retries=2, retry_backoff_s=0.01)
    [rating] = judge.rate([RatingRequest("chat", "helpfulness", "User: hi", "x [r429]")])
    assert (rating.value, rating.error) == (None, "rate_limited")
    assert "HTTP 429 (rate limited)" in rating.detail
    assert sleeps == [7.0, 7.0]  # Retry-After: 7 beats a 0.01 s backoff, before each retry
    assert echo.markers.count("r429") == 3
    assert retry_after_s("100000") == MAX_BACKOFF_S and retry_after_s("soon") == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_stage_advises_a_429_as_rate_limiting_not_a_key_problem(echo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("rlhf_lab.judge.openai_backend.time.sleep", lambda s: None)
    code, out = _run(tmp_path, [_pair(0, "good [r429]", "meh")], _judge(echo, max_retries=1))
    line = " ".join(out.split())
    assert code == 2 and "rate_limited 2" in line
    assert "the server is rate limiting (HTTP 429)" in line and "judge.concurrency" in line
    assert "check judge.base_url" not in line


def test_deeply_nested_answer_under_the_cap_is_a_failed_item(echo, sleeps):
    judge = OpenAIJudge(echo.base_url, "m", max_retries=0)
    [rating] = judge.rate([RatingRequest("chat", "helpfulness", "User: hi", "x [deep]")])
    assert (rating.value, rating.error) == (None, "malformed")
    assert "nested deeper than" in rating.detail
