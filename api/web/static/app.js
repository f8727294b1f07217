// tunelog web UI: plain JavaScript, no build step and nothing fetched from a CDN.
// Every string from the server (titles, reasons, model ids, answers, errors...) is untrusted: it is only
// ever put into the page as text (textContent, text nodes, new Option), never parsed as HTML. The page
// runs under a strict Content-Security-Policy (no inline scripts, styles or event handlers).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: localStorage.getItem("tunelog-key") || "", jobStream: null };
const SVG_NS = "http://www.w3.org/2000/svg";
const ID_RE = /^[A-Za-z0-9_.:-]{1,200}$/;

// Attributes an element may get from el()/svg(): event handlers go through addEventListener, and a link
// may only point inside this page (#...), so no untrusted value can become script or a navigation.
function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (name === "class") node.setAttribute("class", String(value));
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) {
      if (typeof value !== "function") throw new Error("event handlers must be functions");
      node.addEventListener(name.slice(2), value);
    } else if (name === "href" || name === "src" || name === "action" || name === "formaction") {
      const v = String(value);
      if (!v.startsWith("#")) throw new Error(`refusing ${name}=${v}`);
      node.setAttribute(name, v);
    } else node.setAttribute(name, value === true ? "" : String(value));
  }
  return node;
}

// el("td", {class: "x"}, "text", otherNode): children are nodes or strings (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = setAttrs(document.createElement(tag), attrs);
  node.append(...children.flat().filter((c) => c != null && c !== false).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = setAttrs(document.createElementNS(SVG_NS, tag), attrs);
  node.append(...children.filter((c) => c != null).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const fmtNum = (v, digits) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "");

function showError(msg) { $("#error").textContent = msg || ""; }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = String((await res.json()).error.message); } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
async function readSSE(res, onEvent, signal) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done || (signal && signal.aborted)) break;
    buf += decoder.decode(value, { stream: true });
    let idx;
    while ((idx = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      let event = "message", data = "", id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (data) onEvent(event, data, id);
    }
  }
}

// ---- pages --------------------------------------------------------------------------------------------
function showPage() {
  const page = (location.hash || "#chat").slice(1).split("/")[0];
  document.querySelectorAll(".page").forEach((s) => { s.hidden = s.id !== "page-" + page; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  if (state.jobStream && page !== "jobs") { state.jobStream.abort(); state.jobStream = null; }
  if (!state.key) { showError("Enter an API key (scripts/serve printed the admin key; it is in .data/admin_key)."); return; }
  showError("");
  const load = { chat: loadChat, jobs: loadJobs, models: loadModels, documents: loadDocuments }[page];
  if (load) load().catch((e) => showError(e.message));
}

// ---- chat ---------------------------------------------------------------------------------------------
async function loadChat() {
  const [aliases, models] = await Promise.all([
    api("/api/aliases").then((r) => r.json()), api("/v1/models").then((r) => r.json())]);
  const sel = $("#chat-model");
  const current = sel.value;
  sel.replaceChildren();
  for (const a of aliases.data) sel.add(new Option(`${a.alias} → ${a.model}`, a.alias));
  for (const m of models.data) if (m.kind !== "alias") sel.add(new Option(m.id, m.id));
  if (current) sel.value = current;
}

function describeSources(sources) {
  return "Sources: " + sources.map((s, i) =>
    `[${i + 1}] ${s.title} (chunk ${s.chunk}, score ${fmtNum(s.score, 2)})`).join("  ");
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $("#chat-input");
  const question = input.value.trim();
  if (!question) return;
  input.value = "";
  const text = el("span", { class: "text" });
  const answer = el("div", { class: "msg assistant" }, text);
  const sources = el("div", { class: "sources" });
  $("#chat-log").append(el("div", { class: "msg user" }, "You: " + question), answer, sources);
  $("#chat-send").disabled = true;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: {
      model: $("#chat-model").value || "tutor", stream: true, max_tokens: 200, temperature: 0.3,
      retrieval: $("#chat-retrieval").checked, messages: [{ role: "user", content: question }] } });
    await readSSE(res, (event, data) => {
      if (data === "[DONE]") { answer.dataset.done = "true"; return; }
      const chunk = JSON.parse(data);
      if (Array.isArray(chunk.sources) && chunk.sources.length) sources.textContent = describeSources(chunk.sources);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) text.append(String(delta.content));
    });
  } catch (e) { showError(e.message); }
  $("#chat-send").disabled = false;
}

// ---- jobs ---------------------------------------------------------------------------------------------
async function loadJobs() {
  const jobs = (await (await api("/v1/fine_tuning/jobs?limit=50")).json()).data;
  $("#jobs-table tbody").replaceChildren(...jobs.map((j) => el("tr", {
    class: "clickable", dataset: { job: j.id }, onclick: () => { location.hash = "#jobs/" + encodeURIComponent(j.id); },
  }, el("td", {}, j.id), el("td", {}, j.model), el("td", { class: "status-" + j.status }, j.status),
  el("td", {}, j.fine_tuned_model || ""), el("td", {}, fmtTime(j.created_at)))));
  const id = jobIdFromHash();
  if (id) openJob(id);
}

function jobIdFromHash() {
  const raw = location.hash.split("/")[1];
  if (!raw) return null;
  let id;
  try { id = decodeURIComponent(raw); } catch (e) { return null; }
  return ID_RE.test(id) ? id : null;
}

function drawChart(points) {
  const chart = $("#loss-chart");
  const W = 600, H = 240, P = 30;
  const all = points.flatMap((p) => [p.train, p.valid].filter((v) => typeof v === "number" && isFinite(v)));
  chart.dataset.points = String(points.length);
  if (!all.length) { chart.replaceChildren(); return; }
  const maxStep = Math.max(...points.map((p) => p.step), 1);
  const lo = Math.min(...all), hi = Math.max(...all);
  const x = (s) => P + (W - 2 * P) * (maxStep === 1 ? 0.5 : (s - 1) / (maxStep - 1));
  const y = (v) => H - P - (H - 2 * P) * (hi === lo ? 0.5 : (v - lo) / (hi - lo));
  const line = (key, color) => {
    const pts = points.filter((p) => typeof p[key] === "number" && isFinite(p[key])).map((p) => [x(p.step), y(p[key])]);
    return [svg("polyline", { class: key, fill: "none", stroke: color, "stroke-width": 2,
      points: pts.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }),
    ...pts.map(([px, py]) => svg("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 2.5, fill: color }))];
  };
  chart.replaceChildren(
    svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#99a" }),
    svg("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#99a" }),
    svg("text", { x: P, y: P - 8, "font-size": 11 }, hi.toFixed(3)),
    svg("text", { x: P, y: H - 8, "font-size": 11 }, `${lo.toFixed(3)} · step ${maxStep}`),
    ...line("train", "#2f6fde"), ...line("valid", "#d9822b"));
}

function showJobInfo(j) {
  const rows = [["model", j.model], ["fine-tuned model", j.fine_tuned_model], ["suffix", j.user_provided_suffix],
    ["created", fmtTime(j.created_at)], ["finished", fmtTime(j.finished_at)]];
  for (const [k, v] of Object.entries(j.metadata || {})) rows.push(["metadata " + k, v]);
  if (j.error && j.error.message) rows.push(["error", `${j.error.code || "error"}: ${j.error.message}`]);
  $("#job-info").replaceChildren(...rows.filter(([, v]) => v != null && v !== "").flatMap(([k, v]) => [
    el("dt", {}, k), el("dd", k === "error" ? { id: "job-error" } : {}, v)]));
}

async function openJob(id) {
  if (state.jobStream) state.jobStream.abort();
  const ctrl = new AbortController();
  state.jobStream = ctrl;
  $("#job-detail").hidden = false;
  $("#job-title").textContent = id;
  $("#job-info").replaceChildren();
  $("#job-events").replaceChildren();
  $("#job-step").textContent = "0";
  $("#job-loss").textContent = "–";
  const points = [];
  drawChart(points);
  const path = encodeURIComponent(id);
  const refreshInfo = () => api(`/v1/fine_tuning/jobs/${path}`, { signal: ctrl.signal }).then((r) => r.json())
    .then((j) => { if (state.jobStream === ctrl) showJobInfo(j); })
    .catch((e) => { if (e.name !== "AbortError") showError(e.message); });
  refreshInfo();
  // The server ends a stream after its maximum duration with a `reconnect` event: open it again and
  // resume after the last event seen (Last-Event-ID), as EventSource would; `error`: the key was revoked.
  let lastId = null;
  try {
    for (let again = true; again && !ctrl.signal.aborted;) {
      again = false;
      const res = await api(`/api/jobs/${path}/stream`,
        { signal: ctrl.signal, headers: lastId ? { "Last-Event-ID": lastId } : {} });
      await readSSE(res, (event, data, id) => {
      if (id) lastId = id;
      const e = JSON.parse(data);
      if (event === "reconnect") { again = true; return; }
      if (event === "error") { showError(e.error ? String(e.error.message) : "the stream ended"); return; }
      $("#job-status").textContent = e.status;
      $("#job-status").className = "status-" + e.status;
      if (event === "end") { refreshInfo(); return; }
      if (event !== "job") return;
      $("#job-events").prepend(el("li", {}, e.message));
      if (e.type === "metrics" && e.data) {
        // a DSPy job's evaluations carry a score (higher is better), drawn where a validation loss would be
        const dspy = e.data.trial !== undefined && e.data.trial !== null;
        points.push({ step: e.data.step, train: e.data.train_loss, valid: dspy ? e.data.score : e.data.valid_loss });
        $("#job-step").textContent = String(e.data.step);
        $("#job-loss").textContent = fmtNum(dspy ? e.data.score : e.data.train_loss, 4) || "–";
        drawChart(points);
      }
      }, ctrl.signal);
    }
  } catch (e) { if (e.name !== "AbortError") showError(e.message); }
}

// ---- models -------------------------------------------------------------------------------------------
async function loadModels() {
  const [models, aliases] = await Promise.all([
    api("/v1/models").then((r) => r.json()), api("/api/aliases").then((r) => r.json())]);
  $("#aliases").replaceChildren(...aliases.data.map((a) => el("li", {}, el("b", {}, a.alias), " → " + a.model)));
  const sel = $("#promote-model");
  const current = sel.value;
  sel.replaceChildren();
  const rows = [];
  for (const m of models.data.filter((x) => x.kind !== "alias")) {
    const loss = m.lineage && m.lineage.final_metrics ? m.lineage.final_metrics.valid_loss : null;
    const score = m.lineage && m.lineage.scores ? m.lineage.scores.dev_after : null;  // a DSPy program's
    rows.push(el("tr", {}, el("td", {}, m.id), el("td", {}, m.kind), el("td", {}, m.root || ""),
      el("td", {}, m.kind === "dspy-program" ? (fmtNum(score, 3) ? "score " + fmtNum(score, 3) : "") : fmtNum(loss, 4)),
      el("td", {})));
    sel.add(new Option(m.id, m.id));
  }
  $("#models-table tbody").replaceChildren(...rows);
  if (current) sel.value = current;
  await loadHistory($("#promote-alias").value || "tutor");
}

async function loadHistory(alias) {
  $("#history-alias").textContent = alias;
  try {
    const h = await (await api(`/api/aliases/${encodeURIComponent(alias)}/history`)).json();
    $("#alias-history").replaceChildren(...h.data.map((e) => el("li", {}, `${e.model} — ${e.reason} `,
      el("small", {}, `(${e.actor}${e.at ? ", " + fmtTime(e.at) : ""})`))));
  } catch (e) { $("#alias-history").replaceChildren(); }
}

async function promote(ev) {
  ev.preventDefault();
  const alias = $("#promote-alias").value.trim();
  try {
    const r = await (await api(`/api/aliases/${encodeURIComponent(alias)}`, { method: "POST",
      json: { model: $("#promote-model").value, reason: $("#promote-reason").value } })).json();
    $("#promote-result").textContent = `${r.alias} now points at ${r.model}`;
    showError("");
    await loadModels();
  } catch (e) { showError(e.message); }
}

// ---- documents ----------------------------------------------------------------------------------------
async function loadDocuments() {
  const docs = (await (await api("/api/documents")).json()).data;
  $("#docs-table tbody").replaceChildren(...docs.map((d) => el("tr", { dataset: { doc: d.id } },
    el("td", {}, d.title), el("td", {}, d.status), el("td", {}, d.n_chunks),
    el("td", {}, el("button", { type: "button", dataset: { del: d.id }, onclick: () => deleteDocument(d.id) }, "delete")))));
}

async function deleteDocument(id) {
  try { await api("/api/documents/" + encodeURIComponent(id), { method: "DELETE" }); await loadDocuments(); }
  catch (e) { showError(e.message); }
}

async function addDocument(ev) {
  ev.preventDefault();
  const file = $("#doc-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try { await api("/api/documents", { method: "POST", body: form }); await loadDocuments(); }
  catch (e) { showError(e.message); }
}

// ---- wiring -------------------------------------------------------------------------------------------
$("#api-key").value = state.key;
$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem("tunelog-key", state.key);
  showPage();
});
$("#chat-form").addEventListener("submit", sendChat);
$("#promote-form").addEventListener("submit", promote);
$("#promote-alias").addEventListener("change", () => loadHistory($("#promote-alias").value.trim()));
$("#doc-form").addEventListener("submit", addDocument);
window.addEventListener("hashchange", showPage);
setInterval(() => { if ((location.hash || "").startsWith("#jobs") && !location.hash.includes("/") && state.key) loadJobs().catch(() => {}); }, 3000);
showPage();
