"""The openai judge: any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp).

One ``POST {base_url}/chat/completions`` per request, temperature 0, a few tokens. When the
server returns logprobs (``judge.logprobs: true``) the rating is the expectation over the
digits among the first answer token's ``top_logprobs``, as in the local backend; otherwise
(or when no digit is among them) the first digit 1..5 of the reply text is the rating.

Why ``http.client`` and not ``httpx``: httpx's timeouts bound each connect, read and write, not
the whole request (against a loopback server trickling its headers a byte per 50 ms,
``httpx.post(url, timeout=1.0)`` answered after 4.7 s; httpx 0.29, AMD EPYC, 2026-12-07, the
script in docs/architecture.md), and its client hands out no socket before the response for
the watchdog below to shut down.

Robustness, because a long scoring run against a shared server will meet all of these:

- ``judge.timeout_s`` bounds the whole request (connect, headers, body), not each socket
  read, so a server trickling a byte at a time still times out; bodies over
  :data:`MAX_BODY_BYTES` are refused unread;
- up to ``judge.max_retries`` retries with exponential backoff and jitter
  (``retry_backoff_s · 2^attempt · U(0.5, 1)``, or the server's ``Retry-After`` when longer,
  at most :data:`MAX_BACKOFF_S`) for timeouts, connection errors, 5xx, 408/429 and bodies
  that are not the chat-completions schema (a proxy's HTML error page); a 429 that persists
  fails as ``rate_limited``;
- no retry for other 4xx (the request itself is wrong: retrying cannot help), nor for an
  answer with no rating in it or with impossible values (temperature 0: the judge would say
  the same again). Those two are asked once more with :data:`REASK` appended and
  :data:`REASK_MAX_TOKENS` tokens (a chatty judge often opens with "Sure!"); what still fails
  is returned with its kind, and :class:`~rlhf_lab.judge.scorer.Judge` gives it the neutral
  score;
- ``judge.concurrency`` requests in flight (a thread pool: the work is waiting on sockets);
- every failed item comes back as a :class:`~rlhf_lab.judge.base.Rating` with its kind.

The API key is read from ``os.environ[judge.api_key_env]`` at request time and only ever put
in the ``Authorization`` header: it is not stored on the object, in ``judge_id``, in
failure details or in any file; surrounding whitespace (a trailing newline from a key file) is
stripped, and a key with whitespace or control characters inside is refused without being
printed. Redirects are never followed (``http.client`` does not): a 3xx would carry the key to
another address, so it fails as ``redirect``. No key (a local server) sends no header.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

from rlhf_lab.config import JudgeConfig
from rlhf_lab.errors import ConfigError, register_secret, scrub
from rlhf_lab.io import parse_json
from rlhf_lab.judge.base import FAILURE_CLASS, Rating, RatingRequest, answer_probs
from rlhf_lab.judge.rubrics import PAIRWISE_LABELS, SCALE, pairwise_messages, rating_messages

RETRY_STATUS = frozenset({408, 429})
"""4xx statuses that mean "try again later" and are retried like 5xx."""
RATE_LIMITED = 429
"""Too Many Requests: its own failure kind (``rate_limited``), advised as rate limiting."""
MAX_TOKENS = 4
"""Tokens the judge may generate: the digit, plus slack for a leading space or newline."""
REASK_MAX_TOKENS = 16
"""Tokens for the second ask after an answer without a rating: room for a short preamble."""
REASK = "Answer with the single {what} only, nothing else."
"""Appended to the question when the judge's first answer held no rating."""
TOP_LOGPROBS = 10
"""Alternatives per token asked for (vLLM's default cap is 20, OpenAI's 20)."""
MAX_BACKOFF_S = 30.0
"""Longest single wait between retries."""
MAX_BODY_BYTES = 1 << 20
"""Largest response body read; a chat completion of a few tokens with logprobs is ~3 KB."""
LOGPROB_SLACK = 1e-3
"""Float error allowed above logprob 0 (p = 1); beyond it a logprob is impossible."""

_DIGIT = re.compile(r"(?<!\d)([1-5])(?!\d)")
_LETTER = re.compile(r"\b([AB])\b")


class _Failure(Exception):
    def __init__(self, kind: str, detail: str, retry: bool, retry_after: float = 0.0) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retry = kind, detail, retry
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), 0 when it did not say."""


def retry_after_s(value: str | None, now: float | None = None) -> float:
    """A ``Retry-After`` header in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date),
    at most :data:`MAX_BACKOFF_S`; 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_BACKOFF_S)


def _short(data: bytes | str, limit: int = 120) -> str:
    """The server's words for a failure detail: one line, secrets scrubbed *before* cutting
    (a key cut in half would not be found), at most ``limit`` characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(scrub(text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _invalid(detail: str) -> _Failure:
    return _Failure("invalid", detail, False)


def _bracketed(host: str) -> str:
    """``host`` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def display_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe to print or write to disk."""
    parts = urlsplit(url)
    if not parts.netloc:  # a relative Location
        return parts.path
    host = _bracketed(parts.hostname or "")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def parse_response(request: RatingRequest, body: bytes) -> Rating:
    """A :class:`Rating` from a chat-completions response body (raises _Failure)."""
    try:
        doc = parse_json(body)  # bounded nesting: a deep reply is malformed, not a crash
        choice = doc["choices"][0]
        content = choice["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _Failure(
            "malformed", f"not a chat completion ({exc}): {_short(body)}", True
        ) from None
    if content is not None and not isinstance(content, str):
        raise _invalid(f"message.content is {type(content).__name__}, not text: {_short(body)}")
    labels = list(PAIRWISE_LABELS) if request.pairwise else [str(k) for k in SCALE]
    probs = _first_token_probs(choice.get("logprobs"), labels)
    if probs:
        return answer_probs(request, probs)
    match = (_LETTER if request.pairwise else _DIGIT).search(content or "")
    if match is None:
        raise _Failure(
            "no_rating", f"no rating in the judge's answer: {_short(content or '')!r}", False
        )
    if request.pairwise:
        return Rating(1.0 if match.group(1) == PAIRWISE_LABELS[0] else 0.0)
    return Rating(float(match.group(1)))


def _logprob(item: Any, where: str) -> tuple[str, float]:
    """(token, logprob) of one logprobs entry; raises _Failure("invalid") on impossible ones."""
    if not isinstance(item, dict):
        raise _invalid(f"{where} is {type(item).__name__}, not an object")
    token, logprob = item.get("token"), item.get("logprob")
    if not isinstance(token, str):
        raise _invalid(f"{where}.token is {type(token).__name__}, not text")
    if isinstance(logprob, bool) or not isinstance(logprob, int | float):
        raise _invalid(f"{where}.logprob is {type(logprob).__name__}, not a number")
    # -inf is probability 0 (some servers send it); +inf, NaN or p > 1 cannot be a logprob.
    if math.isnan(logprob) or logprob > LOGPROB_SLACK:
        raise _invalid(f"{where}.logprob is {logprob!r}, not a log-probability (<= 0)")
    return token, min(float(logprob), 0.0)


def _first_token_probs(logprobs: Any, labels: list[str]) -> dict[str, float]:
    """Label probabilities at the first non-blank answer token ({} when there are none).

    Raises _Failure("invalid") when the logprobs are not the schema or not probabilities:
    summing them anyway would crash (``exp(1000)``) or give a rating of ``inf``.
    """
    if logprobs is None:
        return {}
    if not isinstance(logprobs, dict):
        raise _invalid(f"logprobs is {type(logprobs).__name__}, not an object")
    entries = logprobs.get("content")
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise _invalid(f"logprobs.content is {type(entries).__name__}, not a list")
    for i, entry in enumerate(entries):
        token, _ = _logprob(entry, f"logprobs.content[{i}]")
        if not token.strip():
            continue
        top = entry.get("top_logprobs")
        if top is not None and not isinstance(top, list):
            raise _invalid(f"logprobs.content[{i}].top_logprobs is {type(top).__name__}")
        alts = [
            _logprob(a, f"logprobs.content[{i}].top_logprobs[{j}]")
            for j, a in enumerate(top or [entry])
        ]
        total = sum(math.exp(lp) for _, lp in alts)
        if total > 1.0 + LOGPROB_SLACK * len(alts):
            raise _invalid(f"logprobs.content[{i}].top_logprobs sum to p = {total:.3g} > 1")
        probs: dict[str, float] = {}
        for tok, lp in alts:
            if tok.strip() in labels:
                probs[tok.strip()] = probs.get(tok.strip(), 0.0) + math.exp(lp)
        return probs
    return {}


class OpenAIJudge:
    """Judge backend on an OpenAI-compatible server (see module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        logprobs: bool = True,
        retry_backoff_s: float = 1.0,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/") + "/chat/completions")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"judge.base_url: not an http(s) URL: {display_url(base_url)!r}")
        # Only host, port and path are kept: user info in the URL is never sent (nor printed).
        self._https = parts.scheme == "https"
        self._host, self._port, self._path = parts.hostname, parts.port, parts.path
        self.url = display_url(parts.geturl())
        self.model_name = model
        # The server's model name identifies the judge; the URL does not (same model, new port).
        self.judge_id = f"openai:{model}:logprobs={logprobs}"
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.logprobs = logprobs
        self.retry_backoff_s = retry_backoff_s
        # A few requests per worker per chunk: the cache is flushed between chunks.
        self.chunk_size = concurrency * 4

    @classmethod
    def from_config(cls, cfg: JudgeConfig) -> OpenAIJudge:
        return cls(
            cfg.base_url or "",
            cfg.model,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
            logprobs=cfg.logprobs,
            retry_backoff_s=cfg.retry_backoff_s,
        )

    @property
    def has_api_key(self) -> bool:
        return bool(os.environ.get(self.api_key_env, "").strip())

    def authorization(self) -> str | None:
        """The ``Authorization`` header value, or None without a key (raises ConfigError)."""
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            return None
        # http.client would refuse such a header with the whole key in its message.
        if not key.isascii() or any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigError(
                f"${self.api_key_env}: the API key has whitespace, control or non-ASCII "
                "characters inside it (not printed); set the variable to the bare key"
            )
        register_secret(key)  # whatever echoes it back is scrubbed before it is printed/written
        return f"Bearer {key}"

    def body(self, request: RatingRequest, *, reask: bool = False) -> dict[str, Any]:
        """The JSON body of one chat-completions request (``reask``: the bare-answer retry)."""
        if request.pairwise:
            messages = pairwise_messages(
                request.task, request.context, request.reply, request.reply_b or ""
            )
        else:
            messages = rating_messages(request.task, request.dim, request.context, request.reply)
        if reask:
            # Appended to the last user turn, not a new one: some chat templates refuse two
            # user turns in a row.
            what = "letter A or B" if request.pairwise else f"digit {SCALE[0]}-{SCALE[-1]}"
            last = messages[-1]
            messages = [
                *messages[:-1],
                {**last, "content": f"{last['content']}\n\n" + REASK.format(what=what)},
            ]
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": REASK_MAX_TOKENS if reask else MAX_TOKENS,
        }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return body

    def _connection(self) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """(connection, request target, extra headers): to the server, or through the proxy
        the environment names (``HTTP(S)_PROXY``, ``NO_PROXY``), as urllib would."""
        scheme = "https" if self._https else "http"
        port = self._port or (443 if self._https else 80)
        proxy = urllib.request.getproxies().get(scheme)
        if not proxy or urllib.request.proxy_bypass(self._host):
            if self._https:
                context = ssl.create_default_context()
                conn = http.client.HTTPSConnection(
                    self._host, port, timeout=self.timeout_s, context=context
                )
                return conn, self._path, {}
            return (
                http.client.HTTPConnection(self._host, port, timeout=self.timeout_s),
                self._path,
                {},
            )
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        extra: dict[str, str] = {}
        if via.username is not None:
            user = f"{unquote(via.username)}:{unquote(via.password or '')}"
            extra["Proxy-Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        if self._https:  # a CONNECT tunnel: the proxy never sees the request or the key
            conn = http.client.HTTPSConnection(
                via.hostname or "",
                via.port or 80,
                timeout=self.timeout_s,
                context=ssl.create_default_context(),
            )
            conn.set_tunnel(self._host, port, headers=extra)
            return conn, self._path, {}
        conn = http.client.HTTPConnection(
            via.hostname or "", via.port or 80, timeout=self.timeout_s
        )
        return conn, f"http://{_bracketed(self._host)}:{port}{self._path}", extra

    def _post(self, payload: bytes, auth: str | None) -> bytes:
        """POST ``payload``; the body of a 2xx answer, else raises _Failure.

        The socket timeout bounds each read; a watchdog shuts the socket down at the
        deadline, so the whole request is bounded too (a trickling server cannot hold it).
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        conn, target, extra = self._connection()
        headers.update(extra)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, expire)
        watchdog.daemon = True
        timeout = _Failure("timeout", f"no answer within {self.timeout_s:g} s", True)
        try:
            watchdog.start()
            conn.connect()
            if expired.is_set():  # it fired before there was a socket to shut down
                raise timeout
            conn.request("POST", target, body=payload, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            if 200 <= status < 300:
                return self._read(resp, expired, timeout)
            text = _short(resp.read(4096) or b"")
        except _Failure:
            raise
        except TimeoutError:
            raise timeout from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            if expired.is_set():
                raise timeout from None
            raise _Failure("connection", f"{self.url}: {type(exc).__name__}: {exc}", True) from None
        finally:
            watchdog.cancel()
            conn.close()
        if 300 <= status < 400:
            where = display_url(resp.getheader("Location") or "")
            raise _Failure(
                "redirect",
                f"HTTP {status} to {where!r} not followed (the API key is only sent to "
                "judge.base_url): set judge.base_url to the final address",
                False,
            )
        wait = retry_after_s(resp.getheader("Retry-After"))
        if status >= 500:
            raise _Failure("http_5xx", f"HTTP {status}: {text}", True, wait)
        if status == RATE_LIMITED:
            raise _Failure("rate_limited", f"HTTP {status} (rate limited): {text}", True, wait)
        raise _Failure("http_4xx", f"HTTP {status}: {text}", status in RETRY_STATUS, wait)

    @staticmethod
    def _read(resp: http.client.HTTPResponse, expired: threading.Event, timeout: _Failure) -> bytes:
        """The body, at most MAX_BODY_BYTES (a runaway server must not fill memory)."""
        too_big = _Failure("malformed", f"response body over {MAX_BODY_BYTES} bytes", True)
        length = resp.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = resp.read(65536)
            if expired.is_set():
                raise timeout
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_big
            chunks.append(chunk)

    def _ask(self, request: RatingRequest, auth: str | None, *, reask: bool) -> Rating:
        """One question, transient failures retried; a Rating or a failed one (its kind)."""
        payload = json.dumps(self.body(request, reask=reask)).encode("utf-8")
        failure = _Failure("connection", "not attempted", False)
        for attempt in range(self.max_retries + 1):
            if attempt:
                wait = self.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                # The server's Retry-After, when longer, wins (both bounded by MAX_BACKOFF_S).
                time.sleep(min(max(wait, failure.retry_after), MAX_BACKOFF_S))
            try:
                return parse_response(request, self._post(payload, auth))
            except _Failure as exc:
                failure = exc
                if not exc.retry:
                    break
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        return Rating(None, failure.kind, scrub(failure.detail + tries))

    def rate_one(self, request: RatingRequest, auth: str | None = None) -> Rating:
        """Ask the server (module docstring); always returns a Rating."""
        rating = self._ask(request, auth, reask=False)
        if rating.ok or FAILURE_CLASS.get(rating.error or "") != "deterministic":
            return rating
        again = self._ask(request, auth, reask=True)
        if again.ok:
            return Rating(again.value, mass=again.mass, reasked=True)
        if FAILURE_CLASS.get(again.error or "") == "deterministic":
            detail = f"{rating.detail}; asked again for a bare answer: {again.detail}"
            return Rating(None, again.error, detail)
        return again  # a timeout on the second ask: a re-run may still get a rating

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        """One Rating per request, ``concurrency`` requests in flight, order preserved."""
        auth = self.authorization()  # a bad key fails once, here, not in every thread
        if len(requests) <= 1 or self.concurrency == 1:
            return [self.rate_one(r, auth) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self.rate_one(r, auth), requests))
