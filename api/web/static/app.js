// tunelog web UI: plain JavaScript, no build step and nothing fetched from a CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: localStorage.getItem("tunelog-key") || "", jobStream: null };

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
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
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
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(event, data);
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
  ({ chat: loadChat, jobs: loadJobs, models: loadModels, documents: loadDocuments })[page]?.().catch((e) => showError(e.message));
}

// ---- chat ---------------------------------------------------------------------------------------------
async function loadChat() {
  const [aliases, models] = await Promise.all([
    api("/api/aliases").then((r) => r.json()), api("/v1/models").then((r) => r.json())]);
  const sel = $("#chat-model");
  const current = sel.value;
  sel.innerHTML = "";
  for (const a of aliases.data) sel.add(new Option(`${a.alias} → ${a.model}`, a.alias));
  for (const m of models.data) if (m.kind !== "alias") sel.add(new Option(m.id, m.id));
  if (current) sel.value = current;
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $("#chat-input");
  const question = input.value.trim();
  if (!question) return;
  input.value = "";
  const log = $("#chat-log");
  const user = document.createElement("div");
  user.className = "msg user";
  user.textContent = "You: " + question;
  const answer = document.createElement("div");
  answer.className = "msg assistant";
  answer.innerHTML = '<span class="text"></span>';
  const sources = document.createElement("div");
  sources.className = "sources";
  log.append(user, answer, sources);
  $("#chat-send").disabled = true;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: {
      model: $("#chat-model").value || "tutor", stream: true, max_tokens: 200, temperature: 0.3,
      retrieval: $("#chat-retrieval").checked, messages: [{ role: "user", content: question }] } });
    await readSSE(res, (event, data) => {
      if (data === "[DONE]") { answer.dataset.done = "true"; return; }
      const chunk = JSON.parse(data);
      if (chunk.sources && chunk.sources.length) {
        sources.textContent = "Sources: " + chunk.sources.map((s, i) =>
          `[${i + 1}] ${s.title} (chunk ${s.chunk}, score ${s.score.toFixed(2)})`).join("  ");
      }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.querySelector(".text").textContent += delta.content;
    });
  } catch (e) { showError(e.message); }
  $("#chat-send").disabled = false;
}

// ---- jobs ---------------------------------------------------------------------------------------------
async function loadJobs() {
  const jobs = (await (await api("/v1/fine_tuning/jobs?limit=50")).json()).data;
  const body = $("#jobs-table tbody");
  body.innerHTML = "";
  for (const j of jobs) {
    const tr = document.createElement("tr");
    tr.className = "clickable";
    tr.dataset.job = j.id;
    tr.innerHTML = `<td>${j.id}</td><td>${j.model}</td><td class="status-${j.status}">${j.status}</td>` +
      `<td>${j.fine_tuned_model || ""}</td><td>${new Date(j.created_at * 1000).toLocaleString()}</td>`;
    tr.onclick = () => { location.hash = "#jobs/" + j.id; };
    body.append(tr);
  }
  const id = location.hash.split("/")[1];
  if (id) openJob(id);
}

function drawChart(points) {
  const svg = $("#loss-chart");
  const W = 600, H = 240, P = 30;
  const all = points.flatMap((p) => [p.train, p.valid].filter((v) => v != null));
  if (!all.length) { svg.innerHTML = ""; return; }
  const maxStep = Math.max(...points.map((p) => p.step), 1);
  const lo = Math.min(...all), hi = Math.max(...all);
  const x = (s) => P + (W - 2 * P) * (maxStep === 1 ? 0.5 : (s - 1) / (maxStep - 1));
  const y = (v) => H - P - (H - 2 * P) * (hi === lo ? 0.5 : (v - lo) / (hi - lo));
  const line = (key, color) => {
    const pts = points.filter((p) => p[key] != null).map((p) => `${x(p.step).toFixed(1)},${y(p[key]).toFixed(1)}`);
    const dots = pts.map((xy) => `<circle cx="${xy.split(",")[0]}" cy="${xy.split(",")[1]}" r="2.5" fill="${color}"/>`).join("");
    return `<polyline class="${key}" fill="none" stroke="${color}" stroke-width="2" points="${pts.join(" ")}"/>` + dots;
  };
  svg.innerHTML = `<line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="#99a"/>` +
    `<line x1="${P}" y1="${P}" x2="${P}" y2="${H - P}" stroke="#99a"/>` +
    `<text x="${P}" y="${P - 8}" font-size="11">${hi.toFixed(3)}</text>` +
    `<text x="${P}" y="${H - 8}" font-size="11">${lo.toFixed(3)} · step ${maxStep}</text>` +
    line("train", "#2f6fde") + line("valid", "#d9822b");
  svg.dataset.points = String(points.length);
}

async function openJob(id) {
  if (state.jobStream) state.jobStream.abort();
  const ctrl = new AbortController();
  state.jobStream = ctrl;
  $("#job-detail").hidden = false;
  $("#job-title").textContent = id;
  $("#job-events").innerHTML = "";
  const points = [];
  drawChart(points);
  try {
    const res = await api(`/api/jobs/${id}/stream`, { signal: ctrl.signal });
    await readSSE(res, (event, data) => {
      const e = JSON.parse(data);
      $("#job-status").textContent = e.status;
      $("#job-status").className = "status-" + e.status;
      if (event !== "job") return;
      const li = document.createElement("li");
      li.textContent = e.message;
      $("#job-events").prepend(li);
      if (e.type === "metrics") {
        points.push({ step: e.data.step, train: e.data.train_loss, valid: e.data.valid_loss });
        $("#job-step").textContent = e.data.step;
        $("#job-loss").textContent = e.data.train_loss.toFixed(4);
        drawChart(points);
      }
    }, ctrl.signal);
  } catch (e) { if (e.name !== "AbortError") showError(e.message); }
}

// ---- models -------------------------------------------------------------------------------------------
async function loadModels() {
  const [models, aliases] = await Promise.all([
    api("/v1/models").then((r) => r.json()), api("/api/aliases").then((r) => r.json())]);
  $("#aliases").innerHTML = aliases.data.map((a) => `<li><b>${a.alias}</b> → ${a.model}</li>`).join("");
  const body = $("#models-table tbody");
  body.innerHTML = "";
  const sel = $("#promote-model");
  sel.innerHTML = "";
  for (const m of models.data.filter((x) => x.kind !== "alias")) {
    const loss = m.lineage && m.lineage.final_metrics ? m.lineage.final_metrics.valid_loss : null;
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${m.id}</td><td>${m.kind}</td><td>${m.root || ""}</td><td>${loss == null ? "" : loss.toFixed(4)}</td><td></td>`;
    body.append(tr);
    sel.add(new Option(m.id, m.id));
  }
  await loadHistory($("#promote-alias").value || "tutor");
}

async function loadHistory(alias) {
  $("#history-alias").textContent = alias;
  try {
    const h = await (await api(`/api/aliases/${encodeURIComponent(alias)}/history`)).json();
    $("#alias-history").innerHTML = h.data.map((e) =>
      `<li>${e.model} — ${e.reason} <small>(${e.actor}${e.at ? ", " + new Date(e.at * 1000).toLocaleString() : ""})</small></li>`).join("");
  } catch (e) { $("#alias-history").innerHTML = ""; }
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
  $("#docs-table tbody").innerHTML = docs.map((d) =>
    `<tr><td>${d.title}</td><td>${d.status}</td><td>${d.n_chunks}</td><td><button data-del="${d.id}">delete</button></td></tr>`).join("");
  document.querySelectorAll("[data-del]").forEach((b) => { b.onclick = async () => {
    await api("/api/documents/" + b.dataset.del, { method: "DELETE" }); loadDocuments(); }; });
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
$("#key-form").onsubmit = (ev) => {
  ev.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem("tunelog-key", state.key);
  showPage();
};
$("#chat-form").onsubmit = sendChat;
$("#promote-form").onsubmit = promote;
$("#promote-alias").onchange = () => loadHistory($("#promote-alias").value);
$("#doc-form").onsubmit = addDocument;
window.addEventListener("hashchange", showPage);
setInterval(() => { if ((location.hash || "").startsWith("#jobs") && !location.hash.includes("/") && state.key) loadJobs().catch(() => {}); }, 3000);
showPage();
