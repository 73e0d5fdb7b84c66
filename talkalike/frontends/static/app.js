// The chat page: sends the conversation to the page's stream and shows the persona's reply as separate bubbles as
// it streams in. Conversations are saved on the server (/page/conversations, beside the terminal's transcripts), so a
// reload picks up where it left off and older ones are a click away. A message the server never got stays on screen
// as "not sent" with a retry, and the header says "offline" until the server answers again.
// No build step; plain browser JavaScript (the Content-Security-Policy allows no inline code).
"use strict";

const $ = (id) => document.getElementById(id);
// The page's own event stream (Ollama's clients have /api/chat): {"text"} and {"end_message"} events, then {"done"}.
const STREAM = "/page/chat";
const CHECK_ONLINE_MS = 15000;  // while online: notice a server that went away before the next message does
const CHECK_OFFLINE_MS = 2000;  // while offline: notice soon that it is back
const CURRENT = "talkalike-conversation";  // localStorage: the conversation a reload reopens

const state = {
  messages: [],  // the conversation as the server has it: {role, content, base}; never a message that failed
  id: null,  // the saved conversation's id; null until its first reply is saved
  saving: false,  // whether the server keeps conversations (it does not for a base model served without a run)
  connected: false, online: true, busy: false, key: null, checker: null,
  tuned: null, base: null, useBase: false,
};

class Offline extends Error {}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

// fetch with the key; a network failure marks the page offline and throws Offline.
async function api(path, options = {}) {
  const send = () => fetch(path, { ...options, headers: headers(options.body !== undefined) });
  let response;
  try {
    response = await send();
    if (response.status === 401) {
      // Bound beyond loopback: the server wants its API key; ask once and keep it for this tab.
      state.key = window.prompt("This twin needs its API key:") || "";
      sessionStorage.setItem("talkalike-key", state.key);
      response = await send();
    }
  } catch (error) {
    setOnline(false);
    throw new Offline("the twin's server cannot be reached");
  }
  setOnline(true);
  return response;
}

async function problem(response) {
  const body = await response.json().catch(() => ({}));
  return (body.error && body.error.message) || body.detail || response.statusText || "HTTP " + response.status;
}

// ---- online / offline -------------------------------------------------------------------------------------------

function showStatus() {
  $("status").textContent = !state.online ? "offline · not connected" : state.busy ? "typing…" : "online";
}

function setOnline(online) {
  if (online !== state.online) {
    state.online = online;
    $("bar").classList.toggle("offline", !online);
    showStatus();
  }
  scheduleCheck();
}

function scheduleCheck() {
  clearTimeout(state.checker);
  state.checker = setTimeout(check, state.online ? CHECK_ONLINE_MS : CHECK_OFFLINE_MS);
}

// Is the server there? Any answer counts (even a 401): only a failed connection is offline.
async function check() {
  if (state.busy) { scheduleCheck(); return; }  // a reply in progress says so itself
  try {
    await fetch("/api/info", { headers: headers(false) });
  } catch (error) {
    setOnline(false);
    return;
  }
  setOnline(true);
  if (!state.connected) connect();
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  showStatus();
}

// ---- the log ----------------------------------------------------------------------------------------------------

function lastKind() {
  const rows = $("log").querySelectorAll(".row");
  return rows.length ? rows[rows.length - 1].dataset.kind : null;
}

function scrollDown() { $("log").scrollTop = $("log").scrollHeight; }

// A row with one bubble; messages of the conversation carry their index, so regenerate knows what to drop.
function addRow(kind, index) {
  const row = document.createElement("div");
  row.className = "row " + kind + (lastKind() !== kind ? " first" : "");
  row.dataset.kind = kind;
  if (index !== undefined) row.dataset.index = index;
  const bubble = document.createElement("div");
  bubble.className = "bubble " + (kind === "theirs" ? "persona" : kind === "mine" ? "other" : "");
  bubble.dir = "auto";
  const text = document.createElement("span");
  text.className = "text";
  bubble.appendChild(text);
  row.appendChild(bubble);
  if (kind !== "error") {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.title = "copy this message";
    copy.setAttribute("aria-label", copy.title);
    copy.addEventListener("click", () => copyText(text.textContent, copy));
    if (kind === "mine") row.prepend(copy); else row.appendChild(copy);
  }
  $("log").appendChild(row);
  return bubble;
}

function showMessage(message, index) {
  const bubble = addRow(message.role === "user" ? "mine" : "theirs", index);
  if (message.base) markBase(bubble);
  bubble.querySelector(".text").textContent = message.content;
  return bubble.parentElement;
}

function markBase(bubble) {
  bubble.classList.add("base");
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = "base model";
  bubble.prepend(tag);
}

function showError(message) {
  addRow("error").querySelector(".text").textContent = message;
  scrollDown();
}

function render() {
  $("log").replaceChildren();
  state.messages.forEach((message, index) => showMessage(message, index));
  refreshActions();
  scrollDown();
}

// Under each reply of the persona: copy it whole; under the last one, regenerate it too.
function refreshActions() {
  for (const old of $("log").querySelectorAll(".actions")) old.remove();
  const messages = state.messages;
  let start = null;
  messages.forEach((message, index) => {
    if (message.role !== "assistant") { start = null; return; }
    if (start === null) start = index;
    const next = messages[index + 1];
    if (next && next.role === "assistant") return;
    const row = $("log").querySelector(`.row[data-index="${index}"]`);
    if (!row) return;
    const reply = messages.slice(start, index + 1).map((m) => m.content).join("\n");
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.appendChild(button("Copy reply", "copy-reply", (b) => copyText(reply, b)));
    if (index === messages.length - 1) actions.appendChild(button("Regenerate", "regenerate", regenerate));
    row.after(actions);
  });
}

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", () => onClick(b));
  return b;
}

async function copyText(text, control) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {  // plain http on a LAN address: no Clipboard API there
      const area = document.createElement("textarea");
      area.value = text;
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
  } catch (error) {
    showError("⚠ could not copy: " + error.message);
    return;
  }
  control.classList.add("done");
  setTimeout(() => control.classList.remove("done"), 1500);
}

// ---- talking ----------------------------------------------------------------------------------------------------

// Streams the persona's reply to the conversation so far; returns its messages. On any failure the reply's bubbles
// are taken down again and the error thrown: a reply is shown only if it arrived whole.
async function streamReply() {
  const base = state.useBase;
  const response = await api(STREAM, {
    method: "POST",
    body: JSON.stringify({
      model: base ? state.base : state.tuned,
      messages: state.messages.map(({ role, content }) => ({ role, content })),
    }),
  });
  if (!response.ok) throw new Error(await problem(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const replies = [], shown = [];
  let buffer = "", bubble = null, finished = false;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        throw new Offline("the reply broke off");
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        if (event.text !== undefined) {
          if (!bubble) {
            bubble = addRow("theirs", state.messages.length + replies.length);
            bubble.classList.add("streaming");
            if (base) markBase(bubble);
            shown.push(bubble.parentElement);
          }
          bubble.querySelector(".text").textContent += event.text;
        } else if (event.end_message && bubble) {
          bubble.classList.remove("streaming");
          replies.push({ role: "assistant", content: bubble.querySelector(".text").textContent, base });
          bubble = null;
        } else if (event.done) {
          finished = true;
        }
        scrollDown();
      }
    }
    if (!finished) throw new Offline("the reply broke off");  // the server went away mid-reply
  } catch (error) {
    for (const row of shown) row.remove();
    if (error instanceof Offline) setOnline(false);
    throw error;
  }
  return replies;
}

// The persona answers the conversation; returns null when it did, else the error (already shown if it was the
// server's: an offline page says so in its header instead).
async function answer() {
  setBusy(true);
  try {
    state.messages.push(...await streamReply());
    refreshActions();
    save();
    return null;
  } catch (error) {
    if (!(error instanceof Offline)) showError("⚠ " + error.message);
    return error;
  } finally {
    setBusy(false);
    $("text").focus();
  }
}

async function send(text) {
  if (state.busy) return;
  const row = showMessage({ role: "user", content: text }, state.messages.length);
  state.messages.push({ role: "user", content: text, base: false });
  refreshActions();
  scrollDown();
  if (await answer() === null) return;
  state.messages.pop();  // the server never answered it: it is not part of the conversation
  delete row.dataset.index;
  row.classList.add("failed");
  const note = document.createElement("div");
  note.className = "failed-note";
  note.append("not sent", button("Retry", "retry", () => {
    if (state.busy) return;
    row.remove();
    send(text);
  }));
  row.appendChild(note);
  refreshActions();
  scrollDown();
}

// Replace the last reply with a new one; the old one comes back if the new one fails.
async function regenerate() {
  if (state.busy || !state.messages.length || state.messages[state.messages.length - 1].role !== "assistant") return;
  let last = state.messages.length - 1;
  while (last >= 0 && state.messages[last].role === "assistant") last--;
  const old = state.messages.splice(last + 1);
  for (const row of [...$("log").children]) {
    if (row.dataset.index === undefined ? row.classList.contains("actions") : Number(row.dataset.index) > last) {
      row.remove();
    }
  }
  const error = await answer();
  if (error !== null) {
    state.messages.push(...old);
    render();
    if (!(error instanceof Offline)) showError("⚠ " + error.message);
  }
}

// ---- saved conversations ----------------------------------------------------------------------------------------

async function save() {
  if (!state.saving || !state.messages.length) return;
  const body = JSON.stringify({ messages: state.messages });
  try {
    let response = state.id ? await api("/page/conversations/" + state.id, { method: "PUT", body }) : null;
    if (!response || response.status === 404) {  // new, or deleted meanwhile: saved as a new one
      response = await api("/page/conversations", { method: "POST", body });
    }
    if (!response.ok) { showError("⚠ not saved: " + await problem(response)); return; }
    setCurrent((await response.json()).id);
  } catch (error) {
    if (!(error instanceof Offline)) showError("⚠ not saved: " + error.message);
    return;
  }
  listConversations().catch(() => {});  // offline: the header says so
}

function setCurrent(id) {
  state.id = id;
  if (id) localStorage.setItem(CURRENT, id); else localStorage.removeItem(CURRENT);
  for (const item of $("conversations").querySelectorAll("li")) {
    item.setAttribute("aria-current", String(item.dataset.id === id));
  }
}

async function listConversations() {
  const response = await api("/page/conversations");
  state.saving = response.ok;  // a 404: this server keeps no conversations
  $("sidebar").hidden = $("menu").hidden = !state.saving;
  if (!response.ok) return;
  const { conversations } = await response.json();
  const items = conversations.map((c) => {
    const item = document.createElement("li");
    item.dataset.id = c.id;
    item.setAttribute("aria-current", String(c.id === state.id));
    const open = button("", "open", () => openConversation(c.id));
    const title = document.createElement("span");
    title.className = "title";
    title.dir = "auto";
    title.textContent = c.title || "(no messages)";
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = new Date(c.updated).toLocaleString() + " · " + c.messages + " messages";
    open.append(title, when);
    const remove = button("×", "delete", () => deleteConversation(c.id));
    remove.title = "delete this conversation";
    remove.setAttribute("aria-label", remove.title);
    item.append(open, remove);
    return item;
  });
  if (!items.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "Your conversations will be listed here.";
    items.push(empty);
  }
  $("conversations").replaceChildren(...items);
}

async function openConversation(id) {
  if (state.busy) return false;
  let response;
  try {
    response = await api("/page/conversations/" + encodeURIComponent(id));
  } catch (error) {
    return false;
  }
  if (!response.ok) {
    if (response.status === 404 && state.id === id) setCurrent(null);
    return false;
  }
  state.messages = (await response.json()).messages;
  setCurrent(id);
  render();
  toggleDrawer(false);
  return true;
}

function newConversation() {
  if (state.busy) return;
  state.messages = [];
  setCurrent(null);
  render();
  toggleDrawer(false);
  $("text").focus();
}

async function deleteConversation(id) {
  if (!window.confirm("Delete this conversation? It cannot be undone.")) return;
  try {
    const response = await api("/page/conversations/" + encodeURIComponent(id), { method: "DELETE" });
    if (!response.ok && response.status !== 404) { showError("⚠ not deleted: " + await problem(response)); return; }
  } catch (error) {
    return;
  }
  if (id === state.id) newConversation();
  listConversations().catch(() => {});  // offline: the header says so
}

function toggleDrawer(open) {
  document.body.classList.toggle("side-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
}

// ---- start ------------------------------------------------------------------------------------------------------

function choose(model) {
  state.useBase = model === "base";
  for (const b of $("switch").querySelectorAll("button")) {
    b.setAttribute("aria-checked", String(b.dataset.model === model));
  }
}

// Who the twin is, the saved conversations, and the one open before a reload; again once a server that was not
// there at first answers.
async function connect() {
  let response;
  try {
    response = await api("/api/info");
  } catch (error) {
    return;  // offline: check() calls again when the server answers
  }
  if (!response.ok) { showError("⚠ cannot reach the twin: " + await problem(response)); return; }
  const info = await response.json();
  state.connected = true;
  $("persona").textContent = info.persona;
  $("avatar").textContent = (info.persona || "?").trim().charAt(0).toUpperCase();
  document.title = info.persona + " · talkalike";
  state.tuned = info.models[0];
  state.base = info.has_adapter ? info.models[1] : info.models[0];
  $("switch").hidden = !info.has_adapter;
  showStatus();
  try {
    await listConversations();
    const current = localStorage.getItem(CURRENT);
    if (state.saving && current && !state.messages.length) await openConversation(current);
  } catch (error) {
    // offline again: the header says so
  }
}

function start() {
  state.key = sessionStorage.getItem("talkalike-key");
  for (const b of $("switch").querySelectorAll("button")) b.addEventListener("click", () => choose(b.dataset.model));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text || state.busy) return;
    $("text").value = "";
    send(text);
  });
  $("reset").addEventListener("click", newConversation);
  $("new-chat").addEventListener("click", newConversation);
  $("menu").addEventListener("click", () => toggleDrawer(!document.body.classList.contains("side-open")));
  $("log").addEventListener("click", () => toggleDrawer(false));
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") toggleDrawer(false); });
  window.addEventListener("offline", () => setOnline(false));
  window.addEventListener("online", check);
  $("text").focus();
  connect();
}

start();
