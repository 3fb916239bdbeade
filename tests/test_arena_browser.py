"""The arena page in headless Chromium (Debian's, driven by Playwright): vote, reveal, escape,
score the rubrics (a crs arena), read the leaderboard panel.

Skips with the reason when /usr/bin/chromium or the playwright package is absent; `make test`
installs Chromium first (`make browser`) when it runs as root.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from rlhf_lab.arena import scores
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
        scores_path=tmp_path / "ratings.jsonl",
        rubrics=scores.RUBRICS,
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
            page.fill("#rater", "ann")
            page.click('button[data-label="left"]')
            page.wait_for_selector("#model-left:not(:empty)")  # no eval: the page's CSP forbids it
            shown_left = page.locator("#model-left").inner_text()
            shown_right = page.locator("#model-right").inner_text()
            assert {shown_left, shown_right} == {"html-model", "plain-model"}
            assert page.locator("#count").inner_text() == "1"
            assert "win" in (page.locator("#card-left").get_attribute("class") or "")
            # Not colour alone: the verdict is also written on each card.
            assert page.locator("#verdict-left").inner_text() == "✓ preferred"
            assert page.locator("#verdict-right").inner_text() == "✗ not preferred"
            # ECR's rubrics: one select per rubric and reply; scores saved beside the votes.
            for sel in page.locator("select[data-rubric]").all():
                page.select_option(
                    f'select[data-rubric="{sel.get_attribute("data-rubric")}"]'
                    f'[data-side="{sel.get_attribute("data-side")}"]',
                    "4" if sel.get_attribute("data-side") == "left" else "2",
                )
            page.click("#save-scores")
            page.wait_for_selector("#save-scores:disabled")
            # The leaderboard panel: both models, small-sample warnings, votes per pair.
            page.wait_for_selector("#board tr:nth-child(2)")  # no eval: CSP forbids it
            page.locator("#board-head th", has_text="lifelikeness").wait_for()
            board = page.locator("#board").inner_text()
            assert "html-model" in board and "plain-model" in board
            assert "too few votes: 1 < 10" in board
            notes = page.locator("#board-notes").inner_text()
            assert "html-model vs plain-model: 1" in notes and "prompts shown: 1 of 1" in notes
            assert "voted on: 1 of 1" in notes  # read back from the vote file
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
    assert vote["note"] == "the plain one reads better" and vote["rater"] == "ann"
    [rated], _ = scores.read_scores(arena.scores_path)
    assert rated["scores"]["left"] == dict.fromkeys(scores.RUBRICS, 4) and rated["rater"] == "ann"
