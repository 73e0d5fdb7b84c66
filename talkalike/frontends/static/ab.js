// The blind A/B test page (ab.html): shows a held-out context and two replies, and records which one the rater
// thinks is real. A rater's link carries a share token (/ab?t=TOKEN); it is moved out of the address bar into this
// tab's storage and sent as the bearer key, so it does not linger in the history or leak through a Referer.
"use strict";
const params = new URLSearchParams(location.search);
if (params.has("t")) {
  sessionStorage.setItem("talkalike-share", params.get("t"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("talkalike-share");
const tally = { answers: 0, spotted: 0 };  // this rater's own score; the server never hands out everyone's

function headers(extra = {}) {
  return token ? { ...extra, Authorization: "Bearer " + token } : extra;
}

function message(body, fallback) {
  return (body.error && body.error.message) || body.detail || fallback;
}

let question = null;
const rater = document.getElementById("rater");
rater.value = localStorage.getItem("talkalike-rater") || "";
rater.addEventListener("change", () => localStorage.setItem("talkalike-rater", rater.value));

function bubble(text, role) {
  const el = document.createElement("div");
  el.className = "bubble " + role;
  el.dir = "auto";  // Hebrew and Arabic bubbles render right-to-left, Latin ones left-to-right
  el.textContent = text;
  return el;
}

function splitBubbles(content) {
  return content.split("<|msg|>").map(s => s.trim()).filter(Boolean);
}

async function load() {
  document.getElementById("result").textContent = "";
  document.getElementById("next").hidden = true;
  const response = await fetch("ab/next", { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    document.getElementById("result").textContent = message(body, "no questions");
    return;
  }
  question = body.question;
  const context = document.getElementById("context");
  context.replaceChildren();
  for (const turn of body.context) {
    for (const text of splitBubbles(turn.content)) context.appendChild(bubble(text, turn.role));
  }
  for (const reply of body.replies) {
    const box = document.getElementById("choice-" + reply.key);
    box.className = "choice";
    const replies = box.querySelector(".replies");
    replies.replaceChildren(...reply.messages.map(text => bubble(text, "assistant")));
    box.querySelector("button").disabled = false;
  }
}

async function pick(key) {
  if (!question) return;
  for (const b of document.querySelectorAll(".choice button")) b.disabled = true;
  const response = await fetch("ab/answer", {
    method: "POST",
    headers: headers({"Content-Type": "application/json"}),
    body: JSON.stringify({question, choice: key, rater: rater.value || null}),
  });
  const body = await response.json().catch(() => ({}));
  question = null;
  if (!response.ok) {
    document.getElementById("result").textContent = message(body, "could not save the answer");
    return;
  }
  for (const side of ["a", "b"]) {
    document.getElementById("choice-" + side).classList.add(side === body.real ? "real" : "twin");
  }
  document.getElementById("result").textContent = body.fooled
    ? "Fooled! That one was the twin."
    : "Right, that was the real one.";
  tally.answers += 1;
  tally.spotted += body.fooled ? 0 : 1;
  document.getElementById("tally").textContent = `You spotted the real one ${tally.spotted} of ${tally.answers} times.`;
  document.getElementById("next").hidden = false;
}

for (const b of document.querySelectorAll(".choice button")) b.addEventListener("click", () => pick(b.dataset.key));
document.getElementById("next").addEventListener("click", load);
load();
