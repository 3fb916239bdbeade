"""The arena's one page: server-rendered HTML, a small stylesheet and plain JS (no build step).

Everything a model (or a prompt file) wrote reaches the page as JSON and is inserted with
``textContent``, never as HTML, so a reply holding ``<script>`` is shown as text. The few
server values put into the HTML are escaped. Keys: 1 / ← left better, 2 / → right better,
3 / t tie, 4 / b both bad, n new comparison (outside text fields).

The two replies are "A" (left, the vote file's ``left``) and "B" (right) everywhere on the page;
after a vote the preferred card is marked in words and by its border style, not by colour only.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from rlhf_lab.judge.rubrics import ECR_RUBRICS, SCALE

_STYLE = """
:root { --fg:#1d2330; --muted:#667085; --line:#d9dee7; --bg:#f6f7f9; --card:#fff;
        --accent:#2f5bd3; --win:#1f8a4c; --lose:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
       color:var(--fg); background:var(--bg); }
header { display:flex; align-items:baseline; gap:1rem; padding:.8rem 1.5rem;
         background:var(--card); border-bottom:1px solid var(--line); }
header h1 { font-size:1.1rem; margin:0; }
header .muted { margin-left:auto; }
main { max-width:1100px; margin:0 auto; padding:1.2rem 1.5rem 3rem; }
.muted { color:var(--muted); font-size:.9rem; }
textarea { width:100%; font:inherit; padding:.5rem .6rem; border:1px solid var(--line);
           border-radius:6px; resize:vertical; background:var(--card); }
button { font:inherit; padding:.45rem .9rem; border-radius:6px; border:1px solid var(--line);
         background:var(--card); cursor:pointer; }
button:hover:enabled { border-color:var(--accent); }
button:disabled { opacity:.45; cursor:default; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
.row { display:flex; gap:.6rem; align-items:center; flex-wrap:wrap; margin:.6rem 0; }
#prompt-view { background:var(--card); border:1px solid var(--line); border-radius:8px;
               padding:.7rem 1rem; margin:1rem 0; }
.turn { white-space:pre-wrap; margin:.2rem 0; }
.turn .role { font-weight:600; color:var(--muted); margin-right:.4rem; }
.cards { display:grid; grid-template-columns:1fr 1fr; gap:1rem; }
.card { background:var(--card); border:2px solid var(--line); border-radius:8px;
        padding:.8rem 1rem; min-height:8rem; }
.card h2 { font-size:.95rem; margin:0 0 .5rem; display:flex; justify-content:space-between; }
.card .model { font-weight:400; color:var(--muted); }
.card.win { border-color:var(--win); border-width:4px; }
.card.lose { border-color:var(--lose); border-style:dashed; }
.verdict { font-weight:600; margin-left:.4rem; }
#identical { background:#fff7e0; border:1px solid #e0c060; border-radius:6px; padding:.4rem .7rem; }
table { border-collapse:collapse; margin:.4rem 0; background:var(--card); }
td, th { border:1px solid var(--line); padding:.25rem .6rem; text-align:left; font-size:.9rem; }
#scores select { font:inherit; }
#leaderboard, #scores { margin-top:1.5rem; }
.reply { white-space:pre-wrap; overflow-wrap:anywhere; }
.votes { justify-content:center; margin-top:1rem; }
kbd { font-size:.75rem; color:var(--muted); border:1px solid var(--line); border-radius:3px;
      padding:0 .25rem; margin-left:.3rem; }
button.primary kbd { color:#fff; border-color:rgba(255,255,255,.6); }
#status { min-height:1.5rem; }
.error { color:var(--lose); }
.spinner { display:inline-block; width:1rem; height:1rem; border:2px solid var(--line);
           border-top-color:var(--accent); border-radius:50%; animation:spin .8s linear infinite;
           vertical-align:-.15rem; margin-right:.4rem; }
@keyframes spin { to { transform:rotate(360deg); } }
[hidden] { display:none !important; }
@media (max-width:720px) { .cards { grid-template-columns:1fr; } }
"""

_SCRIPT = """
const token = document.querySelector('meta[name="arena-token"]').content;
const $ = (id) => document.getElementById(id);
let current = null;   // the open comparison's id
let voted = false;
let identical = false; // both replies the same text: no side can win

async function api(method, url, body) {
  const r = await fetch(url, {
    method, headers: {'Content-Type': 'application/json', 'X-Arena-Token': token},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = {};
  try { data = await r.json(); } catch (e) { /* not JSON: keep the status */ }
  if (!r.ok) throw new Error(data.error || ('HTTP ' + r.status));
  return data;
}

function setStatus(text, busy, isError) {
  const s = $('status');
  s.textContent = '';
  s.className = isError ? 'error' : 'muted';
  if (busy) { const sp = document.createElement('span'); sp.className = 'spinner'; s.append(sp); }
  s.append(document.createTextNode(text));
}

function showPrompt(turns) {
  const view = $('prompt-view');
  view.replaceChildren();
  for (const t of turns) {
    const div = document.createElement('div');
    div.className = 'turn';
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = t.role + ':';
    div.append(role, document.createTextNode(t.content));   // text, never HTML
    view.append(div);
  }
  view.hidden = false;
}

function setVoting(on) {
  for (const b of document.querySelectorAll('button[data-label]')) {
    b.disabled = !on || (identical && b.dataset.side !== undefined);
  }
  $('note').disabled = !on;
}

function resetCards() {
  for (const side of ['left', 'right']) {
    $('reply-' + side).textContent = '';
    $('model-' + side).textContent = '';
    $('verdict-' + side).textContent = '';
    $('card-' + side).className = 'card';
  }
  $('identical').hidden = true;
  if ($('scores')) { $('scores').hidden = true; $('save-scores').disabled = false; }
}

function cell(row, text, tag) {
  const c = document.createElement(tag || 'td');
  c.textContent = text;                       // text, never HTML: model names come from users
  row.append(c);
}

async function refreshBoard() {
  try {
    const b = await api('GET', '/api/leaderboard');
    const head = $('board-head'), body = $('board');
    const rubrics = b.models.length ? Object.keys(b.models[0].human) : [];
    head.replaceChildren();
    const hr = document.createElement('tr');
    for (const h of ['model', 'Elo [95% CI]', 'win rate [95% CI]', 'games', ...rubrics]) {
      cell(hr, h.replaceAll('_', ' '), 'th');
    }
    head.append(hr);
    body.replaceChildren();
    for (const m of b.models) {
      const tr = document.createElement('tr');
      for (const v of [m.model, m.elo, m.win_rate, String(m.games)]) cell(tr, v);
      for (const r of rubrics) cell(tr, m.human[r] || '');
      body.append(tr);
    }
    const pairs = Object.entries(b.pairs).map(([p, n]) => p + ': ' + n).join(' · ');
    $('board-notes').textContent =
      'votes per pair: ' + (pairs || 'none') + ' · A (left) wins of decisive votes: ' +
      b.left_wins + ' · identical replies: ' + b.identical +
      ' · prompts shown: ' + b.coverage.shown + ' of ' + b.coverage.prompts +
      ' · voted on: ' + b.coverage.voted + ' of ' + b.coverage.prompts;
  } catch (e) {
    $('board-notes').textContent = 'leaderboard unavailable: ' + e.message;
  }
}

async function newComparison() {
  setVoting(false);
  $('new').disabled = true;
  resetCards();
  $('cards').hidden = true;
  $('note').value = '';
  voted = false;
  identical = false;
  setStatus('Generating both replies…', true);
  try {
    const text = $('prompt').value.trim();
    let c = await api('POST', '/api/comparisons', {prompt: text || null});
    current = c.id;
    showPrompt(c.prompt);
    for (let i = 0; c.status === 'pending' && i < 3000; i++) {   // at most ~15 minutes
      await new Promise((ok) => setTimeout(ok, 300));
      c = await api('GET', '/api/comparisons/' + current);
    }
    if (c.status !== 'ready') throw new Error(c.error || 'generation did not finish');
    $('reply-left').textContent = c.left || '(empty reply)';
    $('reply-right').textContent = c.right || '(empty reply)';
    $('cards').hidden = false;
    identical = Boolean(c.identical);
    setVoting(true);
    if (identical) {
      $('identical').hidden = false;
      setStatus('A and B are identical: vote tie or both bad (kept, never a pair).');
    } else {
      setStatus('Which reply is better, A or B? The models are hidden until you vote.');
    }
    if ($('scores')) $('scores').hidden = false;
  } catch (e) {
    setStatus(e.message, false, true);
  } finally {
    $('new').disabled = false;
  }
}

async function vote(label) {
  if (!current || voted) return;
  setVoting(false);
  try {
    const r = await api('POST', '/api/comparisons/' + current + '/vote',
                        {label, note: $('note').value, rater: $('rater').value || null});
    voted = true;
    $('model-left').textContent = r.models.left;
    $('model-right').textContent = r.models.right;
    if (label === 'left' || label === 'right') {
      const other = label === 'left' ? 'right' : 'left';
      $('card-' + label).classList.add('win');
      $('card-' + other).classList.add('lose');
      $('verdict-' + label).textContent = '✓ preferred';
      $('verdict-' + other).textContent = '✗ not preferred';
    }
    $('count').textContent = r.votes;
    setStatus('Vote saved (' + WORDS[label] + '). Press n for the next one.');
    refreshBoard();
  } catch (e) {
    setVoting(true);
    setStatus(e.message, false, true);
  }
}

const WORDS = {left: 'A is better', right: 'B is better', tie: 'tie', both_bad: 'both bad'};

async function saveScores() {
  const scores = {left: {}, right: {}};
  for (const sel of document.querySelectorAll('select[data-rubric]')) {
    if (!sel.value) { setStatus('Score every rubric for A and B first.', false, true); return; }
    scores[sel.dataset.side][sel.dataset.rubric] = Number(sel.value);
  }
  try {
    await api('POST', '/api/comparisons/' + current + '/scores',
              {scores, rater: $('rater').value || null});
    $('save-scores').disabled = true;
    setStatus('Scores saved.');
    refreshBoard();
  } catch (e) {
    setStatus(e.message, false, true);
  }
}

if ($('save-scores')) $('save-scores').addEventListener('click', saveScores);
refreshBoard();
$('new').addEventListener('click', newComparison);
for (const b of document.querySelectorAll('button[data-label]')) {
  b.addEventListener('click', () => vote(b.dataset.label));
}
const KEYS = {'1': 'left', 'ArrowLeft': 'left', '2': 'right', 'ArrowRight': 'right',
              '3': 'tie', 't': 'tie', '4': 'both_bad', 'b': 'both_bad'};
document.addEventListener('keydown', (e) => {
  if (['TEXTAREA', 'INPUT', 'SELECT'].includes(e.target.tagName)) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'n') { e.preventDefault(); if (!$('new').disabled) newComparison(); }
  else if (KEYS[e.key] && !$('cards').hidden && !voted) { e.preventDefault(); vote(KEYS[e.key]); }
});
"""


def render_page(
    *,
    token: str,
    nonce: str,
    votes: int,
    has_prompts: bool,
    n_models: int,
    max_prompt: int,
    max_note: int,
    rubrics: Sequence[str] = (),
) -> str:
    """The arena page; ``nonce`` is the Content-Security-Policy nonce of its script and style."""
    hint = (
        "Leave empty for a random held-out prompt, or type your own."
        if has_prompts
        else "Type a prompt (no held-out prompts were found)."
    )
    n = escape(nonce)
    questions = {d.name: d.question for d in ECR_RUBRICS}
    options = '<option value="">–</option>' + "".join(f"<option>{v}</option>" for v in SCALE)
    score_rows = "".join(
        f'<tr><th title="{escape(questions.get(r, r))}">{escape(r.replace("_", " "))}</th>'
        + "".join(
            f'<td><select data-rubric="{escape(r)}" data-side="{side}" '
            f'aria-label="{escape(r)} of reply {name}">{options}</select></td>'
            for side, name in (("left", "A"), ("right", "B"))
        )
        + "</tr>"
        for r in rubrics
    )
    scores_html = (
        f"""<section id="scores" hidden aria-label="rubric scores">
    <h2 class="muted">Score each reply, 1 (low) to 5 (high)</h2>
    <table><thead><tr><th>rubric</th><th>Reply A</th><th>Reply B</th></tr></thead>
    <tbody>{score_rows}</tbody></table>
    <button id="save-scores">Save scores</button>
  </section>"""
        if rubrics
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="arena-token" content="{escape(token)}">
<title>rlhf-lab arena</title>
<style nonce="{n}">{_STYLE}</style>
</head>
<body>
<header>
  <h1>rlhf-lab arena</h1>
  <span class="muted">blind side-by-side · {n_models} models</span>
  <span class="muted">votes: <strong id="count">{votes}</strong></span>
  <label class="muted">rater (optional)
    <input id="rater" maxlength="64" size="10" autocomplete="off"></label>
</header>
<main>
  <label for="prompt" class="muted">{escape(hint)}</label>
  <textarea id="prompt" rows="2" maxlength="{max_prompt}"
            placeholder="Ask something…"></textarea>
  <div class="row">
    <button id="new" class="primary">New comparison<kbd>n</kbd></button>
    <span id="status" class="muted" role="status" aria-live="polite"></span>
  </div>
  <section id="prompt-view" hidden aria-label="prompt"></section>
  <section id="cards" class="cards" hidden>
    <article class="card" id="card-left">
      <h2><span>Reply A<span class="verdict" id="verdict-left"></span></span>
        <span class="model" id="model-left"></span></h2>
      <div class="reply" id="reply-left"></div>
    </article>
    <article class="card" id="card-right">
      <h2><span>Reply B<span class="verdict" id="verdict-right"></span></span>
        <span class="model" id="model-right"></span></h2>
      <div class="reply" id="reply-right"></div>
    </article>
  </section>
  <p id="identical" hidden>A and B are the same text: this comparison cannot prefer either.</p>
  <div class="row votes">
    <button data-label="left" data-side disabled>A is better<kbd>1</kbd></button>
    <button data-label="right" data-side disabled>B is better<kbd>2</kbd></button>
    <button data-label="tie" disabled>Tie<kbd>3</kbd></button>
    <button data-label="both_bad" disabled>Both bad<kbd>4</kbd></button>
  </div>
  <textarea id="note" rows="2" maxlength="{max_note}" disabled
            placeholder="Optional note: why? (saved with the vote)"></textarea>
  {scores_html}
  <section id="leaderboard" aria-label="leaderboard">
    <h2 class="muted">Leaderboard</h2>
    <table><thead id="board-head"></thead><tbody id="board"></tbody></table>
    <p class="muted" id="board-notes"></p>
  </section>
</main>
<script nonce="{n}">{_SCRIPT}</script>
</body>
</html>
"""
