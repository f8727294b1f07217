// tunelog web UI: plain JavaScript, no build step and nothing fetched from a CDN.
// Every string from the server (titles, reasons, model ids, answers, errors...) is untrusted: it is only
// ever put into the page as text (textContent, text nodes, new Option), never parsed as HTML. The page
// runs under a strict Content-Security-Policy (no inline scripts, styles or event handlers).
// Every control is a real <button>, <form> or <label>ed field, so the pages work from the keyboard; what an
// action did is said in a status line (role=status, aria-live) next to it.
"use strict";

const $ = (sel) => document.querySelector(sel);
// The API key is kept for this tab only (sessionStorage: gone when the tab closes, for shared classroom
// computers), or on this device (localStorage) when "remember on this device" is ticked; "Forget key" clears both.
const KEY_NAME = "tunelog-key";
const state = { key: sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "", jobStream: null,
  jobId: null, models: [], evalId: null, runs: "", runsActive: false, candidate: null, current: null,
  preferFile: null, reviewAfter: null, reviewSeq: 0 };
let uid = 0;  // ids that tie a <label> to its field in rows built at run time
const SVG_NS = "http://www.w3.org/2000/svg";
const ID_RE = /^[A-Za-z0-9_.:-]{1,200}$/;
// an id from the page's address, put into an API path: "." and ".." (any run of dots only) would step out of it
const validId = (id) => typeof id === "string" && ID_RE.test(id) && !/^\.+$/.test(id);

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
const enc = encodeURIComponent;

function fmtDuration(s) {
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function showError(msg) { $("#error").textContent = msg || ""; }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  if (!res.ok) {
    const err = new Error(res.status + " " + res.statusText);
    err.status = res.status;
    try {
      const body = (await res.json()).error;
      err.message = String(body.message);
      err.code = body.code;
      err.param = body.param;
      if (Array.isArray(body.problems)) err.problems = body.problems;
    } catch (e) { /* not JSON */ }
    throw err;
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
  const load = { chat: loadChat, review: loadReview, data: loadData, train: loadTrain, jobs: loadJobs,
    evals: loadEvalsPage, models: loadModels, documents: loadDocuments }[page];
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
  const feedback = el("div", { class: "feedback" });  // beside the answer, never inside it: the answer is text only
  $("#chat-log").append(el("div", { class: "msg user" }, "You: " + question), answer, sources, feedback);
  $("#chat-send").disabled = true;
  let chatId = null, finished = false;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: {
      model: $("#chat-model").value || "tutor", stream: true, max_tokens: 200, temperature: 0.3,
      retrieval: $("#chat-retrieval").checked, messages: [{ role: "user", content: question }] } });
    await readSSE(res, (event, data) => {
      if (data === "[DONE]") { finished = true; return; }
      const chunk = JSON.parse(data);
      if (chunk.error) { showError(String(chunk.error.message)); return; }
      if (typeof chunk.id === "string") chatId = chunk.id;
      if (Array.isArray(chunk.sources) && chunk.sources.length) sources.textContent = describeSources(chunk.sources);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) text.append(String(delta.content));
    });
    if (finished && chatId) {
      feedback.append(...feedbackControls(chatId, question, text.textContent));
      answer.dataset.chatId = chatId;
    }
    if (finished) answer.dataset.done = "true";
  } catch (e) { showError(e.message); }
  $("#chat-send").disabled = false;
}

// 👍 / 👎 (ratings 5 and 1 of the API's 1-5) and a suggested better answer, which a teacher reviews (a
// teacher's own suggestion is approved as it is given). The conversation goes with a suggestion: a project
// that stores no chat text keeps only what the suggestion carries.
function feedbackControls(chatId, question, answerText) {
  const status = el("span", { class: "feedback-status", role: "status", "aria-live": "polite" });
  const send = async (body, said) => {
    try {
      const r = await (await api("/api/chat/feedback", { method: "POST", json: Object.assign({ chat_id: chatId }, body) })).json();
      status.textContent = said(r);
      return true;
    } catch (e) { status.textContent = "Not sent: " + e.message; return false; }
  };
  const up = el("button", { type: "button", class: "rate", dataset: { rating: "up" }, "aria-label": "Good answer",
    "aria-pressed": "false", title: "Good answer" }, "👍");
  const down = el("button", { type: "button", class: "rate", dataset: { rating: "down" }, "aria-label": "Bad answer",
    "aria-pressed": "false", title: "Bad answer" }, "👎");
  const rate = async (button, rating) => {
    up.disabled = down.disabled = true;
    if (await send({ rating }, () => "Thanks: your rating was recorded.")) button.setAttribute("aria-pressed", "true");
    else up.disabled = down.disabled = false;
  };
  up.addEventListener("click", () => rate(up, 5));
  down.addEventListener("click", () => rate(down, 1));
  const areaId = "suggest-" + (++uid);
  const area = el("textarea", { id: areaId, class: "suggest-text", rows: 3, maxlength: 16000 });
  const submit = el("button", { type: "submit" }, "Send suggestion");
  const form = el("form", { class: "suggest", id: areaId + "-form", hidden: true },
    el("label", { for: areaId }, "A better answer"), area, submit);
  const toggle = el("button", { type: "button", class: "suggest-toggle", "aria-expanded": "false",
    "aria-controls": areaId + "-form" }, "Suggest a better answer");
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) area.focus();
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const better = area.value.trim();
    if (!better) { status.textContent = "Write the better answer first."; area.focus(); return; }
    submit.disabled = true;
    const messages = [{ role: "user", content: question }, { role: "assistant", content: answerText }];
    const ok = await send({ rating: 1, corrected_answer: better, messages }, (r) => r.approved
      ? "Thanks: your answer was saved and approved for training."
      : "Thanks: your suggestion was sent to a teacher for review.");
    if (ok) { form.hidden = true; toggle.disabled = true; toggle.setAttribute("aria-expanded", "false"); }
    else submit.disabled = false;
  });
  return [up, down, toggle, status, form];
}

// ---- review: suggested corrections ----------------------------------------------------------------------
function questionOf(f) {
  const users = (f.messages || []).filter((m) => m && m.role === "user" && typeof m.content === "string");
  return users.length ? users[users.length - 1].content : "";
}

const REVIEW_PAGE = 100;  // pending corrections fetched at a time ("Load more" fetches the next ones)
const TRAINED_ROLES = ["system", "user", "assistant"];
const COLLAPSE_OVER = 6;  // a longer conversation's earlier messages are folded behind a <details>

async function loadReview() {
  const seq = ++state.reviewSeq;
  const get = (status, n) => api(`/api/chat/feedback?status=${status}&limit=${n}`).then((r) => r.json());
  const [pending, approved, rejected] = await Promise.all([get("pending", REVIEW_PAGE), get("approved", 50), get("rejected", 50)]);
  if (seq !== state.reviewSeq) return;
  $("#review-pending").replaceChildren(...(pending.data.length ? pending.data.map(reviewCard)
    : [el("p", { class: "hint" }, "Nothing waits for review.")]));
  showMorePending(pending);
  $("#review-approved").replaceChildren(...approved.data.map((f) => decidedItem(f, "approved")));
  $("#review-rejected").replaceChildren(...rejected.data.map((f) => decidedItem(f, "rejected")));
}

function showMorePending(page) {
  state.reviewAfter = page.has_more && page.data.length ? (page.last_id || page.data[page.data.length - 1].id) : null;
  $("#review-more").hidden = !state.reviewAfter;
  $("#review-pending-count").textContent = document.querySelectorAll("#review-pending .review-item").length
    + (state.reviewAfter ? "+" : "");
}

async function loadMorePending() {
  const after = state.reviewAfter, seq = state.reviewSeq;
  if (!after) return;
  const button = $("#review-more");
  button.disabled = true;
  try {
    const page = await (await api(`/api/chat/feedback?status=pending&limit=${REVIEW_PAGE}&after=${enc(after)}`)).json();
    if (seq !== state.reviewSeq || state.reviewAfter !== after) return;  // the queue was reloaded meanwhile
    const shown = new Set([...document.querySelectorAll("#review-pending .review-item")].map((n) => n.dataset.feedback));
    $("#review-pending").append(...page.data.filter((f) => !shown.has(f.id)).map(reviewCard));
    showMorePending(page);
    const next = document.querySelectorAll("#review-pending .review-item")[shown.size];
    if (next) next.querySelector("button.approve").focus();  // the keyboard lands on the first card loaded
    showError("");
  } catch (e) { showError(e.message); }
  finally { button.disabled = false; }
}

// What a training file built from this correction holds, as api/chat.py builds it: every system, user and
// assistant message the correction carries (the pupil's own request: they may have written a system prompt
// or made-up assistant turns), its trailing assistant answer replaced by the suggested one.
function trainedOf(f) {
  const all = Array.isArray(f.messages) ? f.messages : [];
  const convo = all.filter((m) => m && typeof m === "object" && TRAINED_ROLES.includes(m.role));
  const replaced = [];
  while (convo.length && convo[convo.length - 1].role === "assistant") replaced.unshift(convo.pop());
  return { convo, replaced, dropped: all.length - convo.length - replaced.length };
}

const contentText = (m) => (typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? ""));
const TURN_LABEL = {
  system: "system: a system message the pupil sent (it is trained as the model's instructions)",
  user: "user: sent by the pupil",
  assistant: "assistant: an earlier answer the pupil sent (it may not be the model's; it is trained as one)",
};

function turnItem(m, isQuestion) {
  const role = TRAINED_ROLES.includes(m.role) ? m.role : "user";
  return el("li", { class: `turn turn-${role}${role === "user" ? "" : " warn"}`, dataset: { role } },
    el("span", { class: "turn-role" }, TURN_LABEL[role]),
    el("span", { class: "turn-text" + (isQuestion ? " question" : "") }, contentText(m)));
}

function trainedList(f) {
  const { convo, replaced, dropped } = trainedOf(f);
  let lastUser = -1;
  convo.forEach((m, i) => { if (m.role === "user") lastUser = i; });
  const items = convo.map((m, i) => turnItem(m, i === lastUser));
  const answer = el("li", { class: "turn turn-suggested", dataset: { role: "assistant" } },
    el("span", { class: "turn-role" }, "assistant: the suggested answer"),
    el("span", { class: "turn-text suggested" }, f.corrected_answer || ""));
  const parts = [];
  if (!convo.length) parts.push(el("p", { class: "hint" }, "No conversation was stored with it: only the suggested answer is trained."));
  if (items.length > COLLAPSE_OVER) {
    // the earlier messages folded, the last one shown; the summary (a keyboard stop) says what is folded
    const earlier = convo.slice(0, -1);
    const system = earlier.filter((m) => m.role === "system").length;
    const assistant = earlier.filter((m) => m.role === "assistant").length;
    const warn = [system ? `${system} system message${system === 1 ? "" : "s"}` : "",
      assistant ? `${assistant} assistant turn${assistant === 1 ? "" : "s"}` : ""].filter((x) => x).join(" and ");
    parts.push(el("details", { class: "trained-earlier" + (warn ? " warn" : "") },
      el("summary", {}, `Show the ${earlier.length} earlier messages` + (warn ? ` (including ${warn} the pupil sent)` : "")),
      el("ol", { class: "trained" }, items.slice(0, -1))));
    parts.push(el("ol", { class: "trained", start: earlier.length + 1 }, items[items.length - 1], answer));
  } else parts.push(el("ol", { class: "trained" }, items, answer));
  if (dropped > 0) parts.push(el("p", { class: "hint" }, `${dropped} other message(s) (not system, user or assistant) are not trained.`));
  return { parts, count: convo.length + 1, replaced };
}

function reviewCard(f) {
  const reasonId = "reason-" + (++uid);
  const reason = el("input", { id: reasonId, class: "reason", autocomplete: "off", maxlength: 2000 });
  const trained = trainedList(f);
  const replaced = f.answer != null ? f.answer : trained.replaced.map(contentText).join("\n\n");
  return el("article", { class: "review-item card", dataset: { feedback: f.id } },
    el("h3", { class: "trained-title" }, `What approving it trains: ${trained.count} message${trained.count === 1 ? "" : "s"}, in order`),
    trained.parts,
    el("dl", {},
      el("dt", {}, "Model's answer (replaced, not trained)"), el("dd", { class: "answer" }, replaced || "(not stored)"),
      f.comment ? [el("dt", {}, "Comment"), el("dd", {}, f.comment)] : null,
      el("dt", {}, "From"), el("dd", {}, `${f.actor || "?"}, ${fmtTime(f.created_at)}`)),
    el("div", { class: "row" },
      el("button", { type: "button", class: "approve", onclick: () => decide(f.id, "approve") }, "Approve"),
      el("label", { for: reasonId }, "Reason (optional)"), reason,
      el("button", { type: "button", class: "reject danger", onclick: () => decide(f.id, "reject", reason.value) }, "Reject")));
}

function decidedItem(f, kind) {
  const other = kind === "approved" ? "reject" : "approve";
  const who = [f.reviewed_by, fmtTime(f.reviewed_at), f.review_reason].filter((x) => x).join(", ");
  return el("li", { dataset: { feedback: f.id } },
    el("span", { class: "question" }, questionOf(f) || "(question not stored)"), " → ",
    el("span", { class: "suggested" }, f.corrected_answer || ""), " ",
    who ? el("small", {}, `(${kind} by ${who})`) : null, " ",
    el("button", { type: "button", class: "link", onclick: () => decide(f.id, other) },
      other === "reject" ? "Reject instead" : "Approve instead"));
}

async function decide(id, action, reason) {
  try {
    const r = await (await api(`/api/chat/feedback/${enc(id)}/${action}`, { method: "POST",
      json: action === "reject" ? { reason: (reason || "").trim() || null } : {} })).json();
    state.preferFile = null;  // a file built before this decision is not what the Train page should offer first
    const files = Array.isArray(r.in_files) ? r.in_files.map(String) : [];
    $("#review-status").textContent = action === "approve"
      ? "Approved: it goes into the next training file built from feedback (Data page)."
      : "Rejected: it is left out of training files built from now on; files already built keep it."
        + (files.length ? ` It is already in ${files.join(", ")}.` : "");
    showError("");
    await loadReview();
  } catch (e) { showError(e.message); }
}

// ---- data: files ----------------------------------------------------------------------------------------
async function loadData() {
  const files = (await (await api("/v1/files?limit=500")).json()).data;
  $("#files-table tbody").replaceChildren(...files.map((f) => el("tr", { dataset: { file: f.id } },
    el("td", {}, f.filename), el("td", {}, f.purpose), el("td", {}, f.id), el("td", {}, f.bytes),
    el("td", {}, fmtTime(f.created_at)))));
}

// A refused dataset's 400 names every problem with its line numbers, joined in one message ("Invalid ...:
// A [category] on line(s) 2, 5; B [other] on line(s) 7"): one item each (a structured `problems` list wins).
function splitProblems(message) {
  const m = /^Invalid [^:]*: ([\s\S]*)$/.exec(message);
  if (!m) return [message];
  const tag = /\[[a-z_]+\]/;
  const out = [];
  for (const part of m[1].split("; ")) {
    // a new problem starts where both it and the one before carry their [category]; other "; " are inside one
    if (out.length && !(tag.test(part) && tag.test(out[out.length - 1]))) out[out.length - 1] += "; " + part;
    else out.push(part);
  }
  return out;
}

function problemText(p) {
  if (p && typeof p === "object") return (p.line != null ? `line ${p.line}: ` : "") + String(p.message || JSON.stringify(p));
  return String(p);
}

async function uploadFile(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  const problems = $("#upload-problems");
  problems.hidden = true;
  problems.replaceChildren();
  if (!file) { $("#upload-status").textContent = "Choose a file first."; return; }
  const form = new FormData();
  form.append("purpose", $("#upload-purpose").value);
  form.append("file", file);
  $("#upload-status").textContent = "Uploading " + file.name + "...";
  $("#upload-send").disabled = true;
  try {
    const f = await (await api("/v1/files", { method: "POST", body: form })).json();
    $("#upload-status").textContent = `Uploaded ${f.filename} as ${f.id} (${f.purpose}).`;
    $("#upload-status").dataset.file = f.id;
    await loadData();
  } catch (e) {
    const list = e.problems ? e.problems.map(problemText) : splitProblems(e.message);
    $("#upload-status").textContent = `${file.name} was refused: ${list.length} problem${list.length === 1 ? "" : "s"}`;
    problems.replaceChildren(...list.map((p) => el("li", {}, p)));
    problems.hidden = false;
  } finally { $("#upload-send").disabled = false; }
}

async function buildFeedbackFile() {
  const out = $("#feedback-file");
  try {
    const f = await (await api("/api/datasets/from-feedback", { method: "POST" })).json();
    out.textContent = `Built ${f.id} (${f.filename}) from ${f.examples} approved correction(s).`;
    out.dataset.file = f.id;
    state.preferFile = f.id;
    await loadData();
  } catch (e) { out.textContent = "No file built: " + e.message; delete out.dataset.file; }
}

// ---- train ----------------------------------------------------------------------------------------------
async function loadTrain() {
  const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=fine-tune&limit=500")]
    .map((p) => p.then((r) => r.json())));
  state.models = models.data;
  fillTrainModels();
  const sel = $("#train-file");
  const want = state.preferFile || sel.value;
  sel.replaceChildren(...files.data.map((f) => new Option(`${f.filename} (${f.id})`, f.id)));
  if (want && [...sel.options].some((o) => o.value === want)) sel.value = want;
  scheduleEstimate(0);
}

function fillTrainModels() {
  const dspy = $("#train-method").value === "dspy";
  const sel = $("#train-model");
  const want = sel.value || "smollm2-135m-instruct";
  // trainable: bundled and provider models; a DSPy program may run on any chat model of the project
  const fits = (m) => m.kind === "base" || m.kind === "remote" || (dspy && (m.kind === "fine-tuned" || m.kind === "alias"));
  sel.replaceChildren(...state.models.filter(fits).map((m) => new Option(m.kind === "alias" ? `${m.id} → ${m.target}` : m.id, m.id)));
  if ([...sel.options].some((o) => o.value === want)) sel.value = want;
}

function methodChanged() {
  const dspy = $("#train-method").value === "dspy";
  document.querySelectorAll("#train-form .hp").forEach((n) => { n.hidden = dspy; });
  document.querySelectorAll("#train-form .dspy-only").forEach((n) => { n.hidden = !dspy; });
  fillTrainModels();
}

function trainBody() {
  const method = $("#train-method").value;
  const body = { model: $("#train-model").value, training_file: $("#train-file").value };
  const suffix = $("#train-suffix").value.trim();
  if (suffix) body.suffix = suffix;
  if (method === "dspy") {
    body.method = { type: "dspy", dspy: { optimizer: $("#train-optimizer").value } };
    return body;
  }
  const hp = {};
  const put = (sel, key, integer) => {
    const v = $(sel).value.trim();
    if (v !== "") hp[key] = integer ? parseInt(v, 10) : Number(v);
  };
  put("#train-epochs", "n_epochs", true);
  put("#train-batch", "batch_size", true);
  put("#train-lr", "learning_rate_multiplier", false);
  body.method = { type: method, [method]: { hyperparameters: hp } };
  return body;
}

let estimateTimer = null, estimateSeq = 0;
function scheduleEstimate(delay = 300) {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(() => { estimate().catch(() => {}); }, delay);
}

function describeEstimate(e) {
  const parts = [];
  if (e.steps != null) parts.push(`${e.steps} ${e.backend === "dspy" ? "evaluation(s)" : "training step(s)"}`);
  if (e.n_epochs != null && e.batch_size != null) parts.push(`${e.n_epochs} epoch(s) of batch size ${e.batch_size}`);
  if (e.lm_calls != null) parts.push(`about ${e.lm_calls} LM calls`);
  parts.push(e.estimated_seconds != null ? "about " + fmtDuration(e.estimated_seconds) : "time decided by the provider");
  if (e.estimated_cost_usd != null) parts.push(`about $${e.estimated_cost_usd.toFixed(2)}`);
  else parts.push(e.backend === "provider" ? "no price known" : "no provider cost (it runs on this server)");
  return parts.join(" · ");
}

async function estimate() {
  const seq = ++estimateSeq;
  const box = $("#estimate");
  const body = trainBody();
  if (!body.model || !body.training_file) {
    $("#estimate-text").textContent = "Choose a model and a training file.";
    $("#estimate-basis").textContent = "";
    box.dataset.state = "empty";
    return null;
  }
  box.dataset.state = "loading";
  try {
    const e = await (await api("/api/fine_tuning/estimate", { method: "POST", json: body })).json();
    if (seq === estimateSeq) {
      $("#estimate-text").textContent = describeEstimate(e);
      $("#estimate-basis").textContent = "How: " + e.basis;
      box.dataset.state = "ok";
    }
    return e;
  } catch (err) {
    if (seq === estimateSeq) {
      $("#estimate-text").textContent = "This job would be refused: " + err.message;
      $("#estimate-basis").textContent = "";
      box.dataset.state = "refused";
    }
    return null;
  }
}

async function startTraining(ev) {
  ev.preventDefault();
  $("#train-start").disabled = true;
  try {
    clearTimeout(estimateTimer);
    await estimate();  // what it will take is on the page before the job starts
    const job = await (await api("/v1/fine_tuning/jobs", { method: "POST", json: trainBody() })).json();
    state.preferFile = null;
    location.hash = "#jobs/" + enc(job.id);
  } catch (e) { showError(e.message); }
  finally { $("#train-start").disabled = false; }
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
  return validId(id) ? id : null;
}

const MAX_EVENTS_LISTED = 500;  // the job page lists a job's latest events, not all of them
const MAX_CHART_POINTS = 1000;  // a long job's curve is drawn from at most this many points
const finite = (v) => typeof v === "number" && isFinite(v);

// every stride-th point (and always the last): a curve of a bounded number of points, however long the job
function downsample(points, max) {
  if (points.length <= max) return points;
  const stride = Math.ceil(points.length / max);
  const out = [];
  for (let i = 0; i < points.length; i += stride) out.push(points[i]);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

function drawChart(points) {
  const chart = $("#loss-chart");
  const W = 600, H = 240, P = 30;
  chart.dataset.points = String(points.length);
  // bounds with a loop: Math.max(...array) throws on a long array
  let maxStep = 1, lo = Infinity, hi = -Infinity;
  for (const p of points) {
    if (!finite(p.step)) continue;
    if (p.step > maxStep) maxStep = p.step;
    for (const v of [p.train, p.valid]) if (finite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  if (lo > hi) { chart.replaceChildren(); return; }
  const shown = downsample(points.filter((p) => finite(p.step)), MAX_CHART_POINTS);
  const x = (s) => P + (W - 2 * P) * (maxStep === 1 ? 0.5 : (s - 1) / (maxStep - 1));
  const y = (v) => H - P - (H - 2 * P) * (hi === lo ? 0.5 : (v - lo) / (hi - lo));
  const line = (key, color) => {
    const pts = shown.filter((p) => finite(p[key])).map((p) => [x(p.step), y(p[key])]);
    return [svg("polyline", { class: key, fill: "none", stroke: color, "stroke-width": 2,
      points: pts.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }),
    // a dot per point while they are few enough to tell apart
    ...(pts.length <= 200 ? pts.map(([px, py]) => svg("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 2.5, fill: color })) : [])];
  };
  chart.replaceChildren(
    svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#99a" }),
    svg("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#99a" }),
    svg("text", { x: P, y: P - 8, "font-size": 11 }, hi.toFixed(3)),
    svg("text", { x: P, y: H - 8, "font-size": 11 }, `${lo.toFixed(3)} · step ${maxStep}`),
    ...line("train", "#2f6fde"), ...line("valid", "#d9822b"));
}

// which statuses each control acts on (the API answers 409 otherwise)
const JOB_ACTIONS = { pause: ["queued", "running"], resume: ["paused"],
  cancel: ["validating_files", "queued", "running", "pausing", "paused"] };

function setJobStatus(status) {
  $("#job-status").textContent = status || "";
  $("#job-status").className = "status-" + status;
  for (const [op, ok] of Object.entries(JOB_ACTIONS)) $("#job-" + op).disabled = !ok.includes(status);
  const row = [...document.querySelectorAll("#jobs-table tr[data-job]")].find((tr) => tr.dataset.job === state.jobId);
  if (row && status) { row.cells[2].textContent = status; row.cells[2].className = "status-" + status; }
}

async function jobAction(op) {
  const id = state.jobId;
  if (!id) return;
  try {
    const j = await (await api(`/v1/fine_tuning/jobs/${enc(id)}/${op}`, { method: "POST" })).json();
    if (state.jobId === id) { setJobStatus(j.status); showJobInfo(j); }
  } catch (e) { showError(e.message); }
}

function showJobInfo(j) {
  const rows = [["model", j.model], ["fine-tuned model", j.fine_tuned_model], ["suffix", j.user_provided_suffix],
    ["created", fmtTime(j.created_at)], ["finished", fmtTime(j.finished_at)]];
  for (const [k, v] of Object.entries(j.metadata || {})) rows.push(["metadata " + k, v]);
  if (j.error && j.error.message) rows.push(["error", `${j.error.code || "error"}: ${j.error.message}`]);
  $("#job-info").replaceChildren(...rows.filter(([, v]) => v != null && v !== "").flatMap(([k, v]) => [
    el("dt", {}, k), el("dd", k === "error" ? { id: "job-error" } : {}, v)]));
  setJobStatus(j.status);
}

async function openJob(id) {
  if (state.jobStream) state.jobStream.abort();
  const ctrl = new AbortController();
  state.jobStream = ctrl;
  state.jobId = id;
  $("#job-detail").hidden = false;
  setJobStatus("");
  $("#job-title").textContent = id;
  $("#job-info").replaceChildren();
  $("#job-events").replaceChildren();
  $("#job-step").textContent = "0";
  $("#job-loss").textContent = "–";
  const points = [];
  drawChart(points);
  // a job with many events: the chart is redrawn at most once a frame, and only the latest events are listed
  let frame = 0;
  const redraw = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; if (state.jobStream === ctrl) drawChart(points); });
  };
  const events = $("#job-events");
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
      setJobStatus(e.status);
      if (event === "end") { refreshInfo(); return; }
      if (event !== "job") return;
      events.prepend(el("li", {}, e.message));
      while (events.childElementCount > MAX_EVENTS_LISTED) events.lastElementChild.remove();
      if (e.type === "metrics" && e.data) {
        // a DSPy job's evaluations carry a score (higher is better), drawn where a validation loss would be
        const dspy = e.data.trial !== undefined && e.data.trial !== null;
        points.push({ step: e.data.step, train: e.data.train_loss, valid: dspy ? e.data.score : e.data.valid_loss });
        $("#job-step").textContent = String(e.data.step);
        $("#job-loss").textContent = fmtNum(dspy ? e.data.score : e.data.train_loss, 4) || "–";
        redraw();
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
    $("#promote-result").className = "";
    showError("");
    await loadModels();
  } catch (e) {
    if (e.code === "promotion_refused") {  // the project's gate: said plainly, with its numbers
      $("#promote-result").textContent = "Promotion refused: " + e.message.replace(/^promotion refused:\s*/i, "");
      $("#promote-result").className = "refused";
    } else showError(e.message);
  }
}

// ---- evals (OpenAI's Evals API: /v1/evals, runs, output items) -----------------------------------------
const RUN_OPEN = ["queued", "in_progress"];
const passRate = (c) => (c && c.total ? `${Math.round((100 * c.passed) / c.total)}%` : "–");

async function loadEvalsPage() {
  let evals;
  try { evals = (await (await api("/v1/evals?limit=100")).json()).data; } catch (e) {
    if (e.status === 404 && !e.param) { $("#evals-status").textContent = "This server has no evaluations API."; return; }
    throw e;
  }
  const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=evals&limit=500")]
    .map((p) => p.then((r) => r.json())));
  $("#evals-table tbody").replaceChildren(...evals.map((x) => el("tr", { dataset: { eval: x.id } },
    el("td", {}, x.name || x.id, el("br"), el("small", {}, x.id)),
    el("td", {}, (x.testing_criteria || []).map((c) => c.name || c.type).join(", ")),
    el("td", {}, fmtTime(x.created_at)),
    el("td", {}, el("button", { type: "button", class: "show-runs", onclick: () => selectEval(x.id, x.name) }, "Show runs")))));
  const keep = (sel, options, want) => {
    const cur = sel.value || want;
    sel.replaceChildren(...options);
    if (cur && [...sel.options].some((o) => o.value === cur)) sel.value = cur;
  };
  keep($("#run-eval"), evals.map((x) => new Option(x.name || x.id, x.id)), state.evalId);
  keep($("#run-model"), models.data.filter((m) => m.kind !== "dspy-program").map((m) =>
    new Option(m.kind === "alias" ? `${m.id} → ${m.target}` : m.id, m.id)), "tutor");
  keep($("#run-file"), files.data.map((f) => new Option(`${f.filename} (${f.id})`, f.id)), null);
  if (!state.evalId && evals.length) state.evalId = evals[0].id;
  if (state.evalId) await loadRuns(state.evalId, true);
}

async function selectEval(id) {
  state.evalId = id;
  state.candidate = state.current = null;
  $("#run-eval").value = id;
  $("#compare-table").hidden = true;
  try { await loadRuns(id, true); } catch (e) { showError(e.message); }
}

async function loadRuns(evalId, force) {
  const runs = (await (await api(`/v1/evals/${enc(evalId)}/runs?limit=100`)).json()).data;
  if (state.evalId !== evalId) return;
  state.runsActive = runs.some((r) => RUN_OPEN.includes(r.status));
  const sig = JSON.stringify(runs.map((r) => [r.id, r.status, r.result_counts]));
  if (!force && sig === state.runs) return;  // unchanged: leave the rows (and the keyboard focus) alone
  state.runs = sig;
  $("#runs-of").textContent = evalId;
  const radio = (group, r) => {
    const input = el("input", { type: "radio", name: group, value: r.id, "aria-label": `${group}: ${r.name || r.id}`,
      onchange: () => { state[group] = r.id; } });
    input.checked = state[group] === r.id;
    return input;
  };
  $("#runs-table tbody").replaceChildren(...runs.map((r) => {
    const c = r.result_counts || {};
    return el("tr", { dataset: { run: r.id, status: r.status } },
      el("td", {}, r.name || r.id, el("br"), el("small", {}, r.id)), el("td", {}, r.model || ""),
      el("td", { class: "status-" + r.status }, r.status),
      el("td", {}, `${c.passed ?? 0} / ${c.failed ?? 0} / ${c.errored ?? 0} / ${c.total ?? 0}`),
      el("td", { class: "pass-rate" }, passRate(c)),
      el("td", {}, radio("candidate", r)), el("td", {}, radio("current", r)),
      el("td", {}, RUN_OPEN.includes(r.status) ? el("button", { type: "button", class: "danger",
        onclick: () => cancelRun(evalId, r.id) }, "Cancel") : null));
  }));
}

async function cancelRun(evalId, runId) {
  try {
    const r = await (await api(`/v1/evals/${enc(evalId)}/runs/${enc(runId)}/cancel`, { method: "POST" })).json();
    $("#evals-status").textContent = `Run ${r.name || r.id}: ${r.status}`;
    await loadRuns(evalId, true);
  } catch (e) { showError(e.message); }
}

async function startRun(ev) {
  ev.preventDefault();
  const evalId = $("#run-eval").value, model = $("#run-model").value, file = $("#run-file").value;
  if (!evalId || !model || !file) { showError("Choose an eval, a model and an evals file."); return; }
  const body = { name: $("#run-name").value.trim() || model, data_source: {
    type: "completions", model,
    input_messages: { type: "template", template: [{ role: "user", content: $("#run-template").value }] },
    source: { type: "file_id", id: file }, sampling_params: { temperature: 0, max_completion_tokens: 64 } } };
  $("#run-start").disabled = true;
  try {
    const run = await (await api(`/v1/evals/${enc(evalId)}/runs`, { method: "POST", json: body })).json();
    $("#evals-status").textContent = `Started run ${run.name || run.id} of ${model}: ${run.status}`;
    showError("");
    state.evalId = evalId;
    await loadRuns(evalId, true);
  } catch (e) { showError(e.message); }
  finally { $("#run-start").disabled = false; }
}

async function outputItems(evalId, runId) {
  const out = [];
  let after = null;
  for (let page = 0; page < 50; page++) {  // at most 5,000 items a run on the page
    const q = `limit=100${after ? "&after=" + enc(after) : ""}`;
    const r = await (await api(`/v1/evals/${enc(evalId)}/runs/${enc(runId)}/output_items?${q}`)).json();
    out.push(...r.data);
    if (!r.has_more || !r.data.length) break;
    after = r.last_id || r.data[r.data.length - 1].id;
  }
  return out;
}

function answerOf(item) {
  if (!item) return "–";
  const s = item.sample || {};
  if (Array.isArray(s.output) && s.output[0]) return String(s.output[0].content ?? "");
  return s.error && s.error.message ? "error: " + s.error.message : "";
}

function resultsOf(item) {
  if (!item) return "–";
  return el("ul", { class: "results" }, (item.results || []).map((r) =>
    el("li", { class: r.passed ? "pass" : "fail" }, `${r.name}: ${r.passed ? "pass" : "fail"}`
      + (typeof r.score === "number" ? ` (${fmtNum(r.score, 2)})` : ""))));
}

function itemLabel(item) {
  if (item && typeof item.question === "string") return item.question;
  const text = JSON.stringify(item);
  return text && text.length > 300 ? text.slice(0, 300) + "..." : text || "";
}

async function compareRuns(ev) {
  ev.preventDefault();
  const evalId = state.evalId, a = state.candidate, b = state.current;
  if (!evalId || !a || !b || a === b) { showError("Pick two different runs: a candidate and the current one."); return; }
  try {
    const [cand, curr] = await Promise.all([outputItems(evalId, a), outputItems(evalId, b)]);
    const rows = new Map();
    for (const it of cand) rows.set(it.datasource_item_id, { item: it.datasource_item, a: it });
    for (const it of curr) {
      const row = rows.get(it.datasource_item_id) || { item: it.datasource_item };
      row.b = it;
      rows.set(it.datasource_item_id, row);
    }
    const ids = [...rows.keys()].sort((x, y) => x - y);
    $("#compare-table tbody").replaceChildren(...ids.map((id) => {
      const r = rows.get(id);
      return el("tr", { dataset: { item: id } }, el("td", {}, itemLabel(r.item)), el("td", { class: "answer" }, answerOf(r.a)),
        el("td", {}, resultsOf(r.a)), el("td", { class: "answer" }, answerOf(r.b)), el("td", {}, resultsOf(r.b)));
    }));
    $("#compare-table").hidden = false;
    showError("");
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
$("#remember-key").checked = !!localStorage.getItem(KEY_NAME);
$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("#api-key").value.trim();
  const [keep, drop] = $("#remember-key").checked ? [localStorage, sessionStorage] : [sessionStorage, localStorage];
  drop.removeItem(KEY_NAME);
  if (state.key) keep.setItem(KEY_NAME, state.key); else keep.removeItem(KEY_NAME);
  showPage();
});
$("#forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  if (state.jobStream) state.jobStream.abort();
  // a fresh page: nothing read with the key stays on screen
  location.reload();
});
$("#review-more").addEventListener("click", loadMorePending);
$("#chat-form").addEventListener("submit", sendChat);
$("#promote-form").addEventListener("submit", promote);
$("#promote-alias").addEventListener("change", () => loadHistory($("#promote-alias").value.trim()));
$("#doc-form").addEventListener("submit", addDocument);
$("#upload-form").addEventListener("submit", uploadFile);
$("#build-feedback-file").addEventListener("click", buildFeedbackFile);
$("#train-form").addEventListener("submit", startTraining);
$("#train-form").addEventListener("input", () => scheduleEstimate());
$("#train-form").addEventListener("change", (ev) => { if (ev.target.id === "train-method") methodChanged(); scheduleEstimate(); });
for (const op of Object.keys(JOB_ACTIONS)) $("#job-" + op).addEventListener("click", () => jobAction(op));
$("#run-form").addEventListener("submit", startRun);
$("#run-eval").addEventListener("change", () => selectEval($("#run-eval").value));
$("#compare-form").addEventListener("submit", compareRuns);
window.addEventListener("hashchange", showPage);
setInterval(() => { if ((location.hash || "").startsWith("#jobs") && !location.hash.includes("/") && state.key) loadJobs().catch(() => {}); }, 3000);
setInterval(() => {  // a running eval's counts, until its runs are done
  if ((location.hash || "").startsWith("#evals") && state.key && state.evalId && state.runsActive) loadRuns(state.evalId).catch(() => {});
}, 2000);
showPage();
