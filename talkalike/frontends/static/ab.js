// The blind A/B test page (ab.html): shows a held-out context and two replies, and records which one the rater
// thinks is real. A round has the length the server names (20, or fewer pairs); the page shows "7 of 20", lets the
// rater skip one, takes keys (1/← for A, 2/→ for B, S to skip, Enter for the next) and ends with the rater's own
// score. The round lives in this tab's storage, so a reload keeps its place.
// A rater's link carries a share token (/ab?t=TOKEN); it is moved out of the address bar into this tab's storage
// and sent as the bearer key, so it does not linger in the history or leak through a Referer.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.has("t")) {
  sessionStorage.setItem("talkalike-share", params.get("t"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("talkalike-share");
const ROUND = "talkalike-ab-round";

function newRound() {
  return { length: null, done: 0, answers: 0, spotted: 0, skipped: 0, seen: [] };
}

let round = JSON.parse(sessionStorage.getItem(ROUND) || "null") || newRound();  // this rater's own score only
let question = null;  // the question on screen, until it is answered or skipped

function keep() { sessionStorage.setItem(ROUND, JSON.stringify(round)); }

function headers(extra = {}) {
  return token ? { ...extra, Authorization: "Bearer " + token } : extra;
}

function message(body, fallback) {
  return (body.error && body.error.message) || body.detail || fallback;
}

const rater = $("rater");
rater.value = localStorage.getItem("talkalike-rater") || "";
rater.addEventListener("change", () => localStorage.setItem("talkalike-rater", rater.value));

// The persona's messages are `assistant`: the same bubbles as on the chat page.
function bubble(text, role) {
  const el = document.createElement("div");
  el.className = "bubble " + role + " " + (role === "assistant" ? "persona" : "other");
  el.dir = "auto";  // Hebrew and Arabic bubbles render right-to-left, Latin ones left-to-right
  el.textContent = text;
  return el;
}

function splitBubbles(content) {
  return content.split("<|msg|>").map(s => s.trim()).filter(Boolean);
}

function showProgress() {
  const length = round.length || 1;
  $("progress").textContent = round.length ? `${Math.min(round.done + 1, length)} of ${length}` : "";
  $("meter").max = length;
  $("meter").value = round.done;
}

function showTally() {
  $("tally").textContent = round.answers
    ? `You spotted the real one ${round.spotted} of ${round.answers} times.` : "";
}

async function load() {
  if (round.length && round.done >= round.length) { finish(); return; }
  $("quiz").hidden = false;
  $("done").hidden = true;
  $("result").textContent = "";
  $("next").hidden = true;
  $("skip").disabled = true;
  question = null;
  const seen = round.seen.map((q) => "seen=" + encodeURIComponent(q)).join("&");
  const response = await fetch("ab/next" + (seen ? "?" + seen : ""), { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("result").textContent = message(body, "no questions");
    return;
  }
  if (!round.length) round.length = body.round;
  question = body.question;
  round.seen.push(question);
  keep();
  showProgress();
  showTally();
  const context = $("context");
  context.replaceChildren();
  for (const turn of body.context) {
    for (const text of splitBubbles(turn.content)) context.appendChild(bubble(text, turn.role));
  }
  for (const reply of body.replies) {
    const box = $("choice-" + reply.key);
    box.className = "choice";
    box.querySelector(".replies").replaceChildren(...reply.messages.map(text => bubble(text, "assistant")));
    box.querySelector("button").disabled = false;
  }
  $("skip").disabled = false;
}

async function pick(key) {
  if (!question) return;
  const asked = question;
  question = null;
  for (const b of document.querySelectorAll(".choice button")) b.disabled = true;
  $("skip").disabled = true;
  const response = await fetch("ab/answer", {
    method: "POST",
    headers: headers({"Content-Type": "application/json"}),
    body: JSON.stringify({question: asked, choice: key, rater: rater.value || null}),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("result").textContent = message(body, "could not save the answer");
    $("next").hidden = false;
    return;
  }
  for (const side of ["a", "b"]) {
    $("choice-" + side).classList.add(side === body.real ? "real" : "twin");
  }
  $("result").textContent = body.fooled ? "Fooled! That one was the twin." : "Right, that was the real one.";
  round.done += 1;
  round.answers += 1;
  round.spotted += body.fooled ? 0 : 1;
  keep();
  showTally();
  $("meter").value = round.done;
  $("next").textContent = round.done >= round.length ? "See your score" : "Next";
  $("next").hidden = false;
  $("next").focus();
}

function skip() {
  if (!question) return;
  question = null;
  round.done += 1;
  round.skipped += 1;
  keep();
  load();
}

function finish() {
  $("quiz").hidden = true;
  $("done").hidden = false;
  showProgress();
  $("progress").textContent = "done";
  const { answers, spotted, skipped } = round;
  $("score").textContent = answers
    ? `You spotted the real one ${spotted} of ${answers} times.`
    : "You skipped every question.";
  const fooled = answers - spotted;
  $("score-detail").textContent = (answers ? `The twin fooled you ${fooled} ${fooled === 1 ? "time" : "times"}.` : "")
    + (skipped ? ` You skipped ${skipped}.` : "");
  $("again").focus();
}

function again() {
  round = newRound();
  keep();
  load();
}

// Keys, unless the rater is typing their name; a focused button already answers Enter and Space itself.
document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, textarea")) return;
  if (event.target.closest("button") && (event.key === "Enter" || event.key === " ")) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (!$("done").hidden) {
    if (key === "Enter") again();
    return;
  }
  if (["1", "a", "ArrowLeft"].includes(key)) pick("a");
  else if (["2", "b", "ArrowRight"].includes(key)) pick("b");
  else if (key === "s") skip();
  else if (["Enter", "n", " "].includes(key) && !$("next").hidden) load();
  else return;
  event.preventDefault();
});

for (const b of document.querySelectorAll(".choice button")) b.addEventListener("click", () => pick(b.dataset.key));
$("next").addEventListener("click", load);
$("skip").addEventListener("click", skip);
$("again").addEventListener("click", again);
load();
