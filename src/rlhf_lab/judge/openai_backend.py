"""The openai judge: any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp).

One ``POST {base_url}/chat/completions`` per request, temperature 0, a few tokens. When the
server returns logprobs (``judge.logprobs: true``) the rating is the expectation over the
digits among the first answer token's ``top_logprobs``, as in the local backend; otherwise
(or when no digit is among them) the first digit 1..5 of the reply text is the rating.

Robustness, because a long scoring run against a shared server will meet all of these:

- a per-request socket timeout (``judge.timeout_s``);
- up to ``judge.max_retries`` retries with exponential backoff and jitter
  (``retry_backoff_s · 2^attempt · U(0.5, 1)``) for timeouts, connection errors, 5xx, 408/429
  and bodies that are not the chat-completions schema (a proxy's HTML error page);
- no retry for other 4xx (the request itself is wrong: retrying cannot help) or a well-formed
  answer with no rating in it (temperature 0: the judge would say the same again);
- ``judge.concurrency`` requests in flight (a thread pool: the work is waiting on sockets);
- every failed item comes back as a :class:`~rlhf_lab.judge.base.Rating` with its kind.

The API key is read from ``os.environ[judge.api_key_env]`` at request time and only ever put
in the ``Authorization`` header: it is not stored on the object, in ``judge_id``, in
failure details or in any file. No key (a local server) sends no header.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlhf_lab.config import JudgeConfig
from rlhf_lab.judge.base import Rating, RatingRequest, answer_probs
from rlhf_lab.judge.rubrics import PAIRWISE_LABELS, SCALE, pairwise_messages, rating_messages

RETRY_STATUS = frozenset({408, 429})
"""4xx statuses that mean "try again later" and are retried like 5xx."""
MAX_TOKENS = 4
"""Tokens the judge may generate: the digit, plus slack for a leading space or newline."""
TOP_LOGPROBS = 10
"""Alternatives per token asked for (vLLM's default cap is 20, OpenAI's 20)."""
MAX_BACKOFF_S = 30.0
"""Longest single wait between retries."""

_DIGIT = re.compile(r"(?<!\d)([1-5])(?!\d)")
_LETTER = re.compile(r"\b([AB])\b")


class _Failure(Exception):
    def __init__(self, kind: str, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retry = kind, detail, retry


def _short(data: bytes | str, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def parse_response(request: RatingRequest, body: bytes) -> Rating:
    """A :class:`Rating` from a chat-completions response body (raises _Failure)."""
    try:
        doc = json.loads(body)
        choice = doc["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _Failure(
            "malformed", f"not a chat completion ({exc}): {_short(body)}", True
        ) from None
    labels = list(PAIRWISE_LABELS) if request.pairwise else [str(k) for k in SCALE]
    probs = _first_token_probs(choice.get("logprobs"), labels)
    if probs:
        return answer_probs(request, probs)
    match = (_LETTER if request.pairwise else _DIGIT).search(content)
    if match is None:
        raise _Failure("no_rating", f"no rating in the judge's answer: {_short(content)!r}", False)
    if request.pairwise:
        return Rating(1.0 if match.group(1) == PAIRWISE_LABELS[0] else 0.0)
    return Rating(float(match.group(1)))


def _first_token_probs(logprobs: Any, labels: list[str]) -> dict[str, float]:
    """Label probabilities at the first non-blank answer token ({} when there are none)."""
    try:
        entries = logprobs["content"] or []
    except (TypeError, KeyError):
        return {}
    for entry in entries:
        if not isinstance(entry, dict) or not str(entry.get("token", "")).strip():
            continue
        probs: dict[str, float] = {}
        for alt in entry.get("top_logprobs") or [entry]:
            try:
                token, logprob = str(alt["token"]).strip(), float(alt["logprob"])
            except (TypeError, KeyError, ValueError):
                continue
            if token in labels and math.isfinite(logprob):
                probs[token] = probs.get(token, 0.0) + math.exp(logprob)
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
        self.url = base_url.rstrip("/") + "/chat/completions"
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
        return bool(os.environ.get(self.api_key_env))

    def body(self, request: RatingRequest) -> dict[str, Any]:
        """The JSON body of one chat-completions request."""
        if request.pairwise:
            messages = pairwise_messages(
                request.task, request.context, request.reply, request.reply_b or ""
            )
        else:
            messages = rating_messages(request.task, request.dim, request.context, request.reply)
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
        }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return body

    def _post(self, payload: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, _short(exc.read() or b"")
            if status >= 500:
                raise _Failure("http_5xx", f"HTTP {status}: {text}", True) from None
            raise _Failure("http_4xx", f"HTTP {status}: {text}", status in RETRY_STATUS) from None
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {self.timeout_s:g} s", True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Failure("timeout", f"no answer within {self.timeout_s:g} s", True) from None
            raise _Failure("connection", f"{self.url}: {exc.reason}", True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Failure("connection", f"{self.url}: {type(exc).__name__}: {exc}", True) from None

    def rate_one(self, request: RatingRequest) -> Rating:
        """Ask the server, retrying transient failures; always returns a Rating."""
        payload = json.dumps(self.body(request)).encode("utf-8")
        failure = _Failure("connection", "not attempted", False)
        for attempt in range(self.max_retries + 1):
            if attempt:
                wait = self.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                time.sleep(min(wait, MAX_BACKOFF_S))
            try:
                return parse_response(request, self._post(payload))
            except _Failure as exc:
                failure = exc
                if not exc.retry:
                    break
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        return Rating(None, failure.kind, failure.detail + tries)

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        """One Rating per request, ``concurrency`` requests in flight, order preserved."""
        if len(requests) <= 1 or self.concurrency == 1:
            return [self.rate_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.rate_one, requests))
