// qwgpu chat UI: conversations in localStorage, streamed replies over the OpenAI-compatible API,
// a small markdown renderer that escapes everything first. No dependencies.
"use strict";

const STORE_KEY = "qwgpu.conversations.v1";
const SETTINGS_KEY = "qwgpu.settings.v1";
const DEFAULT_SETTINGS = { temperature: 0, maxTokens: 1024, thinking: true, mtp: true, system: "" };

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

// ---------------------------------------------------------------------------------------------
// Markdown: escape HTML first, then add a fixed set of tags. Links only for http(s), mailto and
// relative targets.

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function inline(text) {
  const slots = [];
  const keep = (html) => "\u0000" + (slots.push(html) - 1) + "\u0000";
  let s = escapeHtml(text);
  s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _t, code) => keep("<code>" + code + "</code>"));
  s = s.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (m, label, url) => {
    const raw = url.replace(/&amp;/g, "&");
    if (!/^(https?:\/\/|mailto:|\/|#)/i.test(raw)) return m;
    return keep('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + label + "</a>");
  });
  s = s.replace(/(^|[\s(])(https?:\/\/[^\s<)"]+[^\s<)".,;:!?'])/g, (_, pre, url) =>
    pre + keep('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + url + "</a>"));
  s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
  s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>");
  s = s.replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
  s = s.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => slots[Number(i)]);
}

function renderMarkdown(src) {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  let para = [];
  const flushPara = () => {
    if (para.length) out.push("<p>" + inline(para.join("\n")).replace(/\n/g, "<br>") + "</p>");
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/);
    if (fence) {
      flushPara();
      const close = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(close)) body.push(lines[i++]);
      i++; // the closing fence (absent while a block is still streaming)
      const lang = fence[2] ? ' data-lang="' + escapeHtml(fence[2]) + '"' : "";
      out.push("<pre" + lang + "><code>" + escapeHtml(body.join("\n")) + "</code></pre>");
      continue;
    }
    const h = line.match(/^(#{1,6})\s+(.*)$/);
    if (h) {
      flushPara();
      out.push("<h" + h[1].length + ">" + inline(h[2]) + "</h" + h[1].length + ">");
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flushPara();
      out.push("<hr>");
      i++;
      continue;
    }
    if (/^\s*>/.test(line)) {
      flushPara();
      const body = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
      out.push("<blockquote>" + renderMarkdown(body.join("\n")) + "</blockquote>");
      continue;
    }
    const item = line.match(/^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/);
    if (item) {
      flushPara();
      const ordered = /\d/.test(item[2]);
      const tag = ordered ? "ol" : "ul";
      const start = ordered ? parseInt(item[2], 10) : 1;
      const items = [];
      while (i < lines.length) {
        const m = lines[i].match(/^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/);
        if (m && /\d/.test(m[2]) === ordered) {
          items.push([m[3]]);
          i++;
        } else if (items.length && /^\s{2,}\S/.test(lines[i])) {
          items[items.length - 1].push(lines[i].trim());
          i++;
        } else break;
      }
      const attr = ordered && start !== 1 ? ' start="' + start + '"' : "";
      out.push("<" + tag + attr + ">" + items.map((t) => "<li>" + inline(t.join("\n")).replace(/\n/g, "<br>") + "</li>").join("") + "</" + tag + ">");
      continue;
    }
    if (line.trim() === "") {
      flushPara();
      i++;
      continue;
    }
    para.push(line);
    i++;
  }
  flushPara();
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// State

function load(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

const state = {
  conversations: load(STORE_KEY, []),
  settings: Object.assign({}, DEFAULT_SETTINGS, load(SETTINGS_KEY, {})),
  currentId: null,
  abort: null,
  model: null,
  // The server decodes with the model's MTP head (GET /health).
  mtp: false,
};

function save() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(state.conversations));
  } catch (e) {
    console.warn("could not save conversations", e);
  }
}
function saveSettings() {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(state.settings));
}
function current() {
  return state.conversations.find((c) => c.id === state.currentId) || null;
}
function newConversation() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 7), title: "New chat", messages: [], created: Date.now() };
  state.conversations.unshift(c);
  state.currentId = c.id;
  save();
  return c;
}

// ---------------------------------------------------------------------------------------------
// Rendering

function renderSidebar() {
  const ul = $("conversations");
  ul.textContent = "";
  for (const c of state.conversations) {
    const li = el("li", c.id === state.currentId ? "active" : "");
    const open = el("button", "open", c.title || "New chat");
    open.type = "button";
    open.title = c.title;
    open.addEventListener("click", () => {
      if (state.abort) return;
      state.currentId = c.id;
      renderAll();
    });
    const del = el("button", "delete", "×");
    del.type = "button";
    del.setAttribute("aria-label", "Delete conversation " + c.title);
    del.addEventListener("click", () => {
      if (state.abort && c.id === state.currentId) stop();
      state.conversations = state.conversations.filter((x) => x !== c);
      if (state.currentId === c.id) state.currentId = state.conversations.length ? state.conversations[0].id : null;
      save();
      renderAll();
    });
    li.append(open, del);
    ul.append(li);
  }
}

/** "MTP x% (accepted/drafted)" from {drafted, accepted}. */
function mtpText(mtp) {
  return "MTP " + Math.round((100 * mtp.accepted) / mtp.drafted) + "% (" + mtp.accepted + "/" + mtp.drafted + ")";
}

function statsText(m) {
  const t = m.timings;
  const parts = [];
  if (m.usage) parts.push(m.usage.completion_tokens + " tokens");
  if (t) {
    if (t.decode_tokens_per_s) parts.push(t.decode_tokens_per_s.toFixed(1) + " tok/s");
    if (t.ttft_s !== undefined) parts.push("TTFT " + t.ttft_s.toFixed(2) + " s");
    if (t.mtp && t.mtp.drafted) parts.push(mtpText(t.mtp));
  }
  if (m.finish && m.finish !== "stop") parts.push(m.finish);
  return parts.join(" · ");
}

function addCodeButtons(container) {
  for (const pre of container.querySelectorAll("pre")) {
    if (pre.querySelector(".copy-code")) continue;
    const b = el("button", "copy-code", "Copy");
    b.type = "button";
    b.addEventListener("click", () => copyText(pre.querySelector("code").textContent, b));
    pre.append(b);
  }
}

// The element showing each message (kept out of the saved conversations).
const views = new WeakMap();

function messageView(m) {
  const box = el("div", "msg " + m.role);
  box.append(el("div", "role", m.role === "user" ? "You" : "Assistant"));
  if (m.role === "assistant") {
    const det = el("details", "reasoning");
    det.hidden = !m.reasoning;
    det.open = !!m.reasoningOpen;
    det.append(el("summary", "", m.streaming && !m.content ? "Thinking…" : "Reasoning"), el("div", "reasoning-text", m.reasoning || ""));
    det.addEventListener("toggle", () => {
      m.reasoningOpen = det.open;
      m.reasoningTouched = true;
    });
    box.append(det);
  }
  const content = el("div", "content" + (m.role === "user" ? " plain" : ""));
  box.append(content);
  const tools = el("div", "tools");
  box.append(tools);
  const err = el("div", "error");
  err.hidden = true;
  box.append(err);
  const stats = el("div", "stats");
  box.append(stats);
  const copy = el("button", "copy-msg", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy message");
  copy.addEventListener("click", () => copyText(m.content || m.reasoning || "", copy));
  box.append(copy);
  views.set(m, box);
  updateView(box, m);
  return box;
}

function updateView(box, m) {
  const content = box.querySelector(".content");
  if (m.role === "user") {
    content.textContent = m.content;
  } else {
    content.innerHTML = renderMarkdown(m.content || "");
    addCodeButtons(content);
    content.classList.toggle("cursor", !!m.streaming);
    const det = box.querySelector("details.reasoning");
    det.hidden = !m.reasoning;
    det.querySelector(".reasoning-text").textContent = m.reasoning || "";
    det.querySelector("summary").textContent = m.streaming && !m.content && !(m.toolCalls || []).length ? "Thinking…" : "Reasoning";
    if (!m.reasoningTouched) det.open = !!m.streaming && !m.content;
    const tools = box.querySelector(".tools");
    tools.textContent = "";
    for (const t of m.toolCalls || []) tools.append(el("div", "tool-call", "→ " + t.function.name + "(" + t.function.arguments + ")"));
  }
  const err = box.querySelector(".error");
  err.hidden = !m.error;
  err.textContent = m.error || "";
  const stats = box.querySelector(".stats");
  stats.textContent = m.role === "assistant" && !m.streaming ? statsText(m) : "";
}

function renderMessages() {
  const list = $("messages");
  list.textContent = "";
  const c = current();
  if (!c || !c.messages.length) {
    const empty = el("div", "muted");
    empty.id = "empty";
    empty.innerHTML = "Ask anything. <kbd>Enter</kbd> sends, <kbd>Shift</kbd>+<kbd>Enter</kbd> adds a line, <kbd>Esc</kbd> stops.";
    list.append(empty);
    return;
  }
  for (const m of c.messages) list.append(messageView(m));
  list.scrollTop = list.scrollHeight;
}

function renderAll() {
  renderSidebar();
  renderMessages();
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = el("textarea");
    ta.value = text;
    document.body.append(ta);
    ta.select();
    document.execCommand("copy");
    ta.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = old), 1200);
  }
}

// ---------------------------------------------------------------------------------------------
// Talking to the server

function requestBody(c) {
  const s = state.settings;
  const messages = [];
  if (s.system.trim()) messages.push({ role: "system", content: s.system });
  for (const m of c.messages) {
    if (m.role === "user") messages.push({ role: "user", content: m.content });
    else if (m.role === "assistant" && !m.error && !m.streaming) messages.push({ role: "assistant", content: m.content || "" });
  }
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(s.temperature),
    max_tokens: Math.max(1, Math.floor(Number(s.maxTokens) || DEFAULT_SETTINGS.maxTokens)),
    chat_template_kwargs: { enable_thinking: !!s.thinking },
    mtp: !!s.mtp,
  };
  if (state.model) body.model = state.model;
  return body;
}

// Reads `data:` lines of a server-sent event stream.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

let liveTimer = null;

async function send() {
  const input = $("input");
  const text = input.value.trim();
  if (!text || state.abort) return;
  let c = current() || newConversation();
  if (!c.messages.length) c.title = text.slice(0, 48);
  c.messages.push({ role: "user", content: text });
  const m = { role: "assistant", content: "", reasoning: "", streaming: true, toolCalls: [] };
  c.messages.push(m);
  input.value = "";
  autosize();
  save();
  renderAll();
  const update = () => {
    const box = views.get(m);
    if (box && box.isConnected) updateView(box, m);
  };
  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  const t0 = performance.now();
  let firstAt = 0;
  let pieces = 0;
  let running = null;
  let scheduled = false;
  const refresh = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      update();
      const list = $("messages");
      if (list.scrollHeight - list.scrollTop - list.clientHeight < 120) list.scrollTop = list.scrollHeight;
    });
  };
  const live = () => {
    if (!firstAt) {
      $("live-stats").textContent = "waiting… " + ((performance.now() - t0) / 1000).toFixed(1) + " s";
      return;
    }
    const dt = (performance.now() - firstAt) / 1000;
    // Chunks carry the running MTP counts while it is on (an extension field).
    const mtp = running && running.drafted
      ? " · " + mtpText(running)
      : state.mtp && state.settings.mtp ? " · MTP on" : "";
    $("live-stats").textContent = pieces + " tokens · " + (dt > 0 && pieces > 1 ? ((pieces - 1) / dt).toFixed(1) : "–") + " tok/s" + mtp;
  };
  liveTimer = setInterval(live, 250);
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(c)),
      signal: controller.signal,
    });
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      try {
        msg = (await res.json()).error.message;
      } catch {}
      throw new Error(msg);
    }
    const calls = [];
    for await (const data of sseEvents(res)) {
      if (data === "[DONE]") break;
      const ev = JSON.parse(data);
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) m.usage = ev.usage;
      if (ev.timings) m.timings = ev.timings;
      if (ev.mtp && typeof ev.mtp.drafted === "number") running = ev.mtp;
      const ch = ev.choices && ev.choices[0];
      if (!ch) continue;
      const d = ch.delta || {};
      const r = d.reasoning_content !== undefined ? d.reasoning_content : d.reasoning;
      if (r) m.reasoning += r;
      if (d.content) m.content += d.content;
      if (r || d.content) {
        if (!firstAt) firstAt = performance.now();
        pieces++;
      }
      for (const t of d.tool_calls || []) {
        const k = t.index || 0;
        if (!calls[k]) calls[k] = { id: t.id, type: "function", function: { name: "", arguments: "" } };
        if (t.function && t.function.name) calls[k].function.name += t.function.name;
        if (t.function && t.function.arguments) calls[k].function.arguments += t.function.arguments;
      }
      m.toolCalls = calls.filter(Boolean);
      if (ch.finish_reason) m.finish = ch.finish_reason;
      refresh();
    }
  } catch (e) {
    if (e.name === "AbortError") m.finish = "stopped";
    else m.error = String(e.message || e);
  } finally {
    clearInterval(liveTimer);
    m.streaming = false;
    state.abort = null;
    setBusy(false);
    const t = m.timings;
    $("live-stats").textContent = t
      ? (t.decode_tokens_per_s ? t.decode_tokens_per_s.toFixed(1) + " tok/s" : "") +
        (t.mtp && t.mtp.drafted ? " · " + mtpText(t.mtp) : "")
      : m.finish === "stopped" ? "stopped" : "";
    save();
    update();
    input.focus();
  }
}

function stop() {
  if (state.abort) state.abort.abort();
}

function autosize() {
  const t = $("input");
  t.style.height = "auto";
  t.style.height = Math.min(t.scrollHeight, window.innerHeight * 0.4) + "px";
}

// ---------------------------------------------------------------------------------------------
// Settings

function showSettings(open) {
  $("settings").hidden = !open;
  $("open-settings").setAttribute("aria-expanded", String(open));
  if (open) $("set-temperature").focus();
}

function bindSettings() {
  const s = state.settings;
  const temp = $("set-temperature");
  const out = $("temperature-value");
  temp.value = s.temperature;
  out.textContent = Number(s.temperature).toFixed(2);
  temp.addEventListener("input", () => {
    s.temperature = Number(temp.value);
    out.textContent = s.temperature.toFixed(2);
    saveSettings();
  });
  const max = $("set-max-tokens");
  max.value = s.maxTokens;
  max.addEventListener("change", () => {
    s.maxTokens = Math.max(1, Math.floor(Number(max.value) || DEFAULT_SETTINGS.maxTokens));
    max.value = s.maxTokens;
    saveSettings();
  });
  for (const [id, key] of [["set-thinking", "thinking"], ["set-mtp", "mtp"]]) {
    const box = $(id);
    box.checked = !!s[key];
    box.addEventListener("change", () => {
      s[key] = box.checked;
      saveSettings();
    });
  }
  const sys = $("set-system");
  sys.value = s.system;
  sys.addEventListener("input", () => {
    s.system = sys.value;
    saveSettings();
  });
  $("open-settings").addEventListener("click", () => showSettings($("settings").hidden));
  $("close-settings").addEventListener("click", () => showSettings(false));
}

async function loadInfo() {
  try {
    const models = await (await fetch("/v1/models")).json();
    state.model = models.data[0].id;
    $("model-name").textContent = state.model;
    const health = await (await fetch("/health")).json();
    $("device").textContent = health.device + (health.mtp ? " · MTP available" : "");
    state.mtp = !!health.mtp;
    if (!health.mtp) $("set-mtp").disabled = true;
    $("demo-link").hidden = !health.demo;
  } catch (e) {
    $("model-name").textContent = "server unreachable";
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function init() {
  state.currentId = state.conversations.length ? state.conversations[0].id : null;
  // A reply interrupted by a reload is not streaming any more.
  for (const c of state.conversations) for (const m of c.messages) if (m.streaming) m.streaming = false;
  bindSettings();
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => {
    if (state.abort) return;
    newConversation();
    renderAll();
    $("input").focus();
  });
  $("toggle-sidebar").addEventListener("click", () => $("sidebar").classList.toggle("hidden"));
  const input = $("input");
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  input.addEventListener("input", autosize);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      if (state.abort) {
        e.preventDefault();
        stop();
      } else if (!$("settings").hidden) showSettings(false);
    }
    if (e.key.toLowerCase() === "o" && e.shiftKey && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $("new-chat").click();
    }
  });
  renderAll();
  loadInfo();
  input.focus();
}

document.addEventListener("DOMContentLoaded", init);
