"""The arena page in headless Chromium (Debian's, driven by Playwright): vote, reveal, escape.

Skips with the reason when /usr/bin/chromium or the playwright package is absent; `make test`
installs Chromium first (`make browser`) when it runs as root.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from rlhf_lab.arena.app import Arena, create_app
from rlhf_lab.arena.votes import read_votes

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EVIL = (
    '<script>window.__pwned = 1</script><b id="bold">bold?</b> & '
    '<img src=x onerror="window.__pwned = 2">'
)
PLAIN = "A plain reply.\nSecond line."

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="/usr/bin/chromium is absent: install Debian's chromium (`make browser`, as root)",
)


@pytest.fixture
def served(tmp_path):
    """The arena on 127.0.0.1 at an ephemeral port, in a thread; stopped after the test."""
    import uvicorn

    replies = {"html-model": EVIL, "plain-model": PLAIN}
    arena = Arena(
        list(replies),
        lambda model, prompt, settings: replies[model],
        tmp_path / "votes.jsonl",
        [[{"role": "user", "content": "Say something <i>nice</i>."}]],
        {"temperature": 0.7, "max_new_tokens": 16},
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(arena), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):  # bounded: ~10 s
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "the arena server did not start"
    yield f"http://127.0.0.1:{port}/", arena
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()
    assert not thread.is_alive()


def test_vote_in_the_browser_reveals_models_and_writes_the_vote(served):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright absent")
    url, arena = served
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            assert page.locator("#count").inner_text() == "0"
            page.click("#new")
            page.wait_for_selector("#cards", state="visible", timeout=15_000)
            left = page.locator("#reply-left").inner_text()
            right = page.locator("#reply-right").inner_text()
            assert {left, right} == {EVIL, PLAIN}  # the HTML reply is shown as its text
            assert page.locator("#bold").count() == 0 and page.locator(".reply img").count() == 0
            assert page.evaluate("window.__pwned") is None
            assert "<i>nice</i>" in page.locator("#prompt-view").inner_text()
            assert page.locator("#model-left").inner_text() == ""  # blind before the vote
            page.fill("#note", "the plain one reads better")
            page.click('button[data-label="left"]')
            page.wait_for_selector("#model-left:not(:empty)")  # no eval: the page's CSP forbids it
            shown_left = page.locator("#model-left").inner_text()
            shown_right = page.locator("#model-right").inner_text()
            assert {shown_left, shown_right} == {"html-model", "plain-model"}
            assert page.locator("#count").inner_text() == "1"
            assert "win" in (page.locator("#card-left").get_attribute("class") or "")
            if os.environ.get("ARENA_SCREENSHOT"):
                page.screenshot(path=os.environ["ARENA_SCREENSHOT"], full_page=True)
            assert errors == []
        finally:
            browser.close()
    votes, bad = read_votes(arena.votes_path)
    assert bad == [] and len(votes) == 1
    [vote] = votes
    assert vote["label"] == "left" and vote["model_left"] == shown_left
    assert vote["chosen"] == [{"role": "assistant", "content": left}]
    assert vote["note"] == "the plain one reads better"
