// The chat page: sends the conversation to /page/chat and streams the persona's reply as separate bubbles.
// No build step; plain browser JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], models: [], tuned: null, base: null, useBase: false, busy: false, key: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, options = {}) {
  let response = await fetch(path, { ...options, headers: headers() });
  if (response.status === 401) {
    // Bound beyond loopback: the server wants its API key; ask once and keep it for this tab.
    state.key = window.prompt("This twin needs its API key:") || "";
    sessionStorage.setItem("talkalike-key", state.key);
    response = await fetch(path, { ...options, headers: headers() });
  }
  return response;
}

function addRow(kind, first) {
  const row = document.createElement("div");
  row.className = "row " + kind + (first ? " first" : "");
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.dir = "auto";
  row.appendChild(bubble);
  $("log").appendChild(row);
  return bubble;
}

function scrollDown() { $("log").scrollTop = $("log").scrollHeight; }

function lastKind() {
  const rows = $("log").querySelectorAll(".row");
  return rows.length ? rows[rows.length - 1].classList[1] : null;
}

function showMine(text) {
  const bubble = addRow("mine", lastKind() !== "mine");
  bubble.textContent = text;
  scrollDown();
}

function showError(message) {
  const bubble = addRow("error", true);
  bubble.textContent = message;
  scrollDown();
}

function newReplyBubble() {
  const bubble = addRow("theirs", lastKind() !== "theirs");
  bubble.classList.add("streaming");
  if (state.useBase) {
    bubble.classList.add("base");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "base model";
    bubble.appendChild(tag);
  }
  const text = document.createElement("span");
  text.className = "text";
  bubble.appendChild(text);
  return bubble;
}

async function send(text) {
  state.busy = true;
  $("send").disabled = true;
  $("status").textContent = "typing…";
  showMine(text);
  state.history.push({ role: "user", content: text });
  let bubble = null;
  try {
    const response = await api("/page/chat", {
      method: "POST",
      body: JSON.stringify({ model: state.useBase ? state.base : state.tuned, messages: state.history }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        if (event.text !== undefined) {
          if (!bubble) bubble = newReplyBubble();
          bubble.querySelector(".text").textContent += event.text;
        } else if (event.end_message && bubble) {
          bubble.classList.remove("streaming");
          state.history.push({ role: "assistant", content: bubble.querySelector(".text").textContent });
          bubble = null;
        }
        scrollDown();
      }
    }
  } catch (error) {
    showError("⚠ " + error.message);
  } finally {
    if (bubble) bubble.classList.remove("streaming");
    state.busy = false;
    $("send").disabled = false;
    $("status").textContent = "online";
    $("text").focus();
  }
}

function choose(model) {
  state.useBase = model === "base";
  for (const button of $("switch").querySelectorAll("button")) {
    button.setAttribute("aria-checked", String(button.dataset.model === model));
  }
}

async function start() {
  state.key = sessionStorage.getItem("talkalike-key");
  const response = await api("/api/info");
  if (!response.ok) { showError("⚠ cannot reach the twin: " + response.statusText); return; }
  const info = await response.json();
  $("persona").textContent = info.persona;
  $("avatar").textContent = (info.persona || "?").trim().charAt(0).toUpperCase();
  document.title = info.persona + " · talkalike";
  state.tuned = info.models[0];
  state.base = info.has_adapter ? info.models[1] : info.models[0];
  $("switch").hidden = !info.has_adapter;
  for (const button of $("switch").querySelectorAll("button")) {
    button.addEventListener("click", () => choose(button.dataset.model));
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text || state.busy) return;
    $("text").value = "";
    send(text);
  });
  $("reset").addEventListener("click", () => {
    if (state.busy) return;
    state.history = [];
    $("log").replaceChildren();
  });
  $("text").focus();
}

start();
