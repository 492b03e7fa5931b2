// vidcat search page: plain browser JavaScript, no build step. Every value from the
// server is written with textContent or as an attribute, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  table: null,        // GET /api/table
  type: "text",       // text | image | video | similar
  query: null,        // the current query, as URL parameters
  offset: 0,
  focused: -1,
  file: null,         // the last uploaded file (uploads are not in the URL)
};

// ---- the catalog ---------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function loadTable() {
  try {
    state.table = await api("/api/table");
  } catch (error) {
    $("table-info").textContent = `cannot read the catalog: ${error.message}`;
    return;
  }
  const t = state.table;
  const rows = t.rows[t.table] ?? 0;
  const parts = [`${t.table}: ${rows.toLocaleString()} clips`];
  if (t.embedded_with) parts.push(`model ${t.embedded_with}`);
  if (t.vector_index) parts.push(`index ${t.vector_index.type}`);
  if (!t.thumbnails) parts.push("no thumbnails (vidcat thumbnails makes them)");
  $("table-info").textContent = parts.join(" · ");
  $("mode-label").hidden = t.fts_columns.length === 0;
  // Only where `vidcat dedup` has run: without its table the server refuses dedup (400).
  $("dedup-label").hidden = !t.dedup;
}

// ---- filters -------------------------------------------------------------------------
function filterColumns() {
  return state.table ? state.table.filterable_columns : [];
}

function addFilter(column, op, value) {
  const columns = filterColumns();
  if (!columns.length) return;
  const row = document.createElement("div");
  row.className = "filter";
  const colSel = document.createElement("select");
  colSel.setAttribute("aria-label", "filter column");
  const meta = new Set((state.table.metadata_columns || []).map((c) => c.name));
  for (const c of [...columns].sort((a, b) => meta.has(b.name) - meta.has(a.name))) {
    colSel.append(new Option(`${c.name} (${c.kind})`, c.name));
  }
  const opSel = document.createElement("select");
  opSel.setAttribute("aria-label", "filter operator");
  const input = document.createElement("input");
  input.type = "text";
  input.setAttribute("aria-label", "filter value");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = "×";
  remove.title = "remove this filter";
  // A column the table lacks (an old link): kept, so the server says what is wrong.
  const known = (name) => columns.find((x) => x.name === name);
  if (column && !known(column)) colSel.append(new Option(`${column} (not in the table)`, column));
  const fillOps = () => {
    const c = known(colSel.value);
    const ops = c ? c.operators : state.table.operators;
    opSel.replaceChildren(...ops.map((o) => new Option(o, o)));
  };
  colSel.addEventListener("change", fillOps);
  opSel.addEventListener("change", () => {
    input.hidden = opSel.value === "null" || opSel.value === "notnull";
  });
  remove.addEventListener("click", () => row.remove());
  if (column) colSel.value = column;
  fillOps();
  if (op) opSel.value = op;
  input.hidden = opSel.value === "null" || opSel.value === "notnull";
  if (value !== undefined) input.value = value;
  row.append(colSel, opSel, input, remove);
  $("filters").append(row);
  return input;
}

function currentFilters() {
  const out = [];
  for (const row of $("filters").querySelectorAll(".filter")) {
    const [col, op, input] = row.querySelectorAll("select, input");
    if (op.value === "null" || op.value === "notnull") out.push(`${col.value}:${op.value}`);
    else if (input.value !== "") out.push(`${col.value}:${op.value}:${input.value}`);
  }
  return out;
}

function setFilters(filters) {
  $("filters").replaceChildren();
  for (const f of filters) {
    const [column, op, ...rest] = f.split(":");
    addFilter(column, op, rest.join(":"));
  }
}

// ---- the query and the URL ---------------------------------------------------------------
function setType(type) {
  state.type = type;
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.type === type));
  }
  const upload = type === "image" || type === "video";
  $("q").hidden = upload;
  $("file").hidden = !upload;
  $("file").accept = type === "image" ? "image/png,image/jpeg,image/webp,image/bmp" : "video/*";
  $("rerank-label").hidden = type !== "text";
  $("mode-label").hidden = type !== "text" || !state.table || !state.table.fts_columns.length;
}

function formQuery() {
  const p = new URLSearchParams();
  p.set("type", state.type);
  p.set("k", $("k").value);
  if (state.type === "text") {
    p.set("q", $("q").value.trim());
    if ($("rerank").checked) p.set("rerank", "true");
    if (!$("mode-label").hidden && $("mode").value !== "vector") p.set("mode", $("mode").value);
  }
  if (dedupOn()) p.set("dedup", "true");
  for (const f of currentFilters()) p.append("filter", f);
  return p;
}

function dedupOn() {
  return $("dedup").checked && !$("dedup-label").hidden;
}

function applyQuery(p) {
  const type = p.get("type") || (p.get("clip_id") || p.get("video_id") ? "similar" : "text");
  setType(type === "similar" ? "text" : type);
  state.type = type;
  $("q").value = p.get("q") || "";
  $("k").value = ["24", "48", "96"].includes(p.get("k")) ? p.get("k") : "24";
  $("rerank").checked = p.get("rerank") === "true";
  $("mode").value = p.get("mode") === "hybrid" ? "hybrid" : "vector";
  $("dedup").checked = p.get("dedup") === "true";
  setFilters(p.getAll("filter"));
}

function shareable(p) {
  return state.type !== "image" && state.type !== "video";
}

async function run(p, { push = true, append = false } = {}) {
  const type = p.get("type");
  if (type === "text" && !p.get("q")) {
    status("type a query", true);
    return;
  }
  state.query = p;
  if (!append) state.offset = 0;
  if (push && shareable(p)) {
    const url = `/?${p.toString()}`;
    if (url !== location.pathname + location.search) history.pushState(null, "", url);
  }
  const api_ = new URLSearchParams(p);
  api_.delete("type");
  api_.set("offset", String(state.offset));
  status("searching…");
  $("go").disabled = true;
  try {
    let body;
    if (type === "image" || type === "video") {
      if (!state.file) { status(`choose ${type === "image" ? "an image" : "a video"} file`, true); return; }
      body = await api(`/api/search/${type}?${api_}`, {
        method: "POST",
        body: state.file,
        headers: { "Content-Type": "application/octet-stream" },
      });
    } else if (type === "similar") {
      body = await api(`/api/similar?${api_}`);
    } else {
      body = await api(`/api/search?${api_}`);
    }
    render(body.results, append);
    const shown = $("results").children.length;
    const what = type === "similar" ? `more like ${p.get("clip_id") || p.get("video_id")}` : "";
    const dedup = p.get("dedup") === "true" ? " · near-duplicates hidden" : "";
    const expected = body.search && body.search.expected_recall;
    const recall = typeof expected === "number" ? ` · recall@10 ≈ ${expected.toFixed(2)}` : "";
    status(`${shown} results ${what}${dedup} · ${body.took_ms.toFixed(0)} ms${recall}`);
    $("more").hidden = body.next_offset === null;
    state.offset = body.next_offset ?? state.offset;
  } catch (error) {
    status(error.status === 429 || error.status === 503
      ? `the server is busy (${error.message}); try again in a moment` : error.message, true);
  } finally {
    $("go").disabled = false;
  }
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// ---- results -------------------------------------------------------------------------
function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }
function seconds(x) { return x === null || x === undefined ? "?" : `${Number(x).toFixed(1)}s`; }

function captionOf(r) {
  const m = r.metadata || {};
  for (const key of ["caption", "title", "description", "text"]) {
    if (typeof m[key] === "string" && m[key]) return m[key];
  }
  const first = Object.values(m).find((v) => typeof v === "string" && v);
  return first || r.video_id;
}

function render(results, append) {
  const grid = $("results");
  if (!append) { grid.replaceChildren(); state.focused = -1; }
  for (const r of results) grid.append(card(r));
}

function card(r) {
  const el = document.createElement("article");
  el.className = "card";
  el.tabIndex = 0;
  el.dataset.clipId = r.clip_id;
  el.dataset.start = r.clip_start_s ?? 0;
  el.dataset.end = r.clip_end_s ?? "";
  el.dataset.media = r.media_url;

  const media = document.createElement("div");
  media.className = "media";
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = captionOf(r);
  img.src = r.thumbnail_url;
  img.addEventListener("error", () => {
    const none = document.createElement("div");
    none.className = "none";
    none.textContent = "no thumbnail";
    img.replaceWith(none);
  });
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = `${seconds(r.clip_start_s)}–${seconds(r.clip_end_s)}`;
  media.append(img, badge);
  media.addEventListener("mouseenter", () => play(el));
  media.addEventListener("mouseleave", () => stop(el));
  media.addEventListener("click", () => play(el));

  const body = document.createElement("div");
  body.className = "body";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = captionOf(r);
  const meta = document.createElement("div");
  meta.className = "meta";
  const extra = Object.entries(r.metadata || {})
    .filter(([, v]) => v !== null && v !== captionOf(r))
    .map(([k, v]) => `${k}: ${v}`);
  meta.textContent = [`${r.video_id} #${r.clip_index}`, ...extra].join(" · ");
  const scores = document.createElement("div");
  scores.className = "scores";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${fmt(r.score)}`;
  scores.append(score);
  if (r.rerank_score !== null && r.rerank_score !== undefined) {
    const rr = document.createElement("span");
    rr.className = "rerank-score";
    rr.textContent = `re-rank ${fmt(r.rerank_score)}`;
    scores.append(rr);
  }
  if (r.cosine !== null && r.cosine !== undefined) {
    const c = document.createElement("span");
    c.textContent = `cosine ${fmt(r.cosine)}`;
    scores.append(c);
  }
  if (r.group_size !== null && r.group_size !== undefined) {
    el.dataset.groupSize = r.group_size;
    if (r.group_size > 1) {
      const g = document.createElement("span");
      g.className = "group-size";
      const others = r.group_size - 1;
      g.textContent = `+${others} near-duplicate${others === 1 ? "" : "s"}`;
      g.title = `a group of ${r.group_size} near-duplicate clips; this is its best match`;
      scores.append(g);
    }
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more-like-this";
  more.textContent = "more like this";
  more.addEventListener("click", () => moreLikeThis(r.clip_id));
  const open = document.createElement("a");
  open.href = r.media_url;
  open.textContent = "video";
  open.target = "_blank";
  open.rel = "noopener";
  actions.append(more, open);
  body.append(caption, meta, scores, actions);
  el.append(media, body);
  el.addEventListener("focus", () => { state.focused = [...$("results").children].indexOf(el); });
  return el;
}

function play(el) {
  const media = el.querySelector(".media");
  if (media.querySelector("video")) return;
  for (const other of document.querySelectorAll(".card video")) stop(other.closest(".card"));
  const start = Number(el.dataset.start) || 0;
  const end = el.dataset.end === "" ? null : Number(el.dataset.end);
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.preload = "auto";
  video.src = `${el.dataset.media}#t=${start}${end !== null ? `,${end}` : ""}`;
  video.addEventListener("loadedmetadata", () => { video.currentTime = start; video.play().catch(() => {}); });
  video.addEventListener("timeupdate", () => {  // loop the clip's own segment
    if (end !== null && video.currentTime >= end) { video.currentTime = start; video.play().catch(() => {}); }
  });
  const img = media.querySelector("img, .none");
  if (img) img.hidden = true;
  media.prepend(video);
}

function stop(el) {
  if (!el) return;
  const video = el.querySelector("video");
  if (!video) return;
  video.pause();
  video.removeAttribute("src");
  video.load();
  video.remove();
  const img = el.querySelector(".media img, .media .none");
  if (img) img.hidden = false;
}

function moreLikeThis(clipId) {
  const p = new URLSearchParams();
  p.set("type", "similar");
  p.set("clip_id", clipId);
  p.set("k", $("k").value);
  if (dedupOn()) p.set("dedup", "true");
  for (const f of currentFilters()) p.append("filter", f);
  state.type = "similar";
  run(p);
}

// ---- copy as CLI / Python ------------------------------------------------------------------
function shellQuote(s) { return `'${String(s).replaceAll("'", "'\\''")}'`; }
function pyQuote(s) { return JSON.stringify(String(s)); }

function asCli(p) {
  const table = state.table ? state.table.table : "videos";
  const type = p.get("type");
  const args = ["vidcat", "query"];
  if (type === "similar") args.push(p.get("clip_id") ? "clip" : "similar", shellQuote(p.get("clip_id") || p.get("video_id")));
  else if (type === "image" || type === "video") args.push(type, shellQuote(state.file ? state.file.name : "FILE"));
  else args.push("text", shellQuote(p.get("q") || ""));
  args.push("--db", '"$VIDCAT_DB"', "--table", shellQuote(table), "--k", p.get("k") || "24");
  for (const f of p.getAll("filter")) args.push("--filter", shellQuote(f));
  if (p.get("rerank") === "true") args.push("--rerank");
  if (p.get("mode") === "hybrid") args.push("--hybrid");
  if (p.get("dedup") === "true") args.push("--dedup");
  return args.join(" ");
}

function asPython(p) {
  const table = state.table ? state.table.table : "videos";
  const type = p.get("type");
  const filters = p.getAll("filter").map(pyQuote).join(", ");
  const k = p.get("k") || "24";
  const dedup = p.get("dedup") === "true" ? ", dedup=True" : "";
  let call;
  if (type === "similar" && p.get("clip_id")) call = `search.similar_clip(${pyQuote(p.get("clip_id"))}, k=${k}, where=where${dedup})`;
  else if (type === "similar") call = `search.similar(${pyQuote(p.get("video_id"))}, k=${k}, where=where${dedup})`;
  else if (type === "image" || type === "video") call = `search.${type}(${pyQuote(state.file ? state.file.name : "FILE")}, k=${k}, where=where${dedup})`;
  else {
    const rerank = p.get("rerank") === "true" ? ", rerank=True" : "";
    const mode = p.get("mode") === "hybrid" ? ', mode="hybrid"' : "";
    call = `search.text(${pyQuote(p.get("q") || "")}, k=${k}, where=where${rerank}${mode}${dedup})`;
  }
  const model = state.table && state.table.embedded_with ? state.table.embedded_with.split("@")[0] : "internvideo2-1b";
  const weights = model === "internvideo2-1b" ? ', checkpoint="PATH_OR_URI"' : "";
  return [
    "import os",
    "from pipeline.models import ModelSpec",
    "from pipeline.query import CatalogSearch",
    "",
    `model = ModelSpec(model=${pyQuote(model)}${weights})`,
    `search = CatalogSearch(os.environ["VIDCAT_DB"], ${pyQuote(table)}, model=model)`,
    `where = search.filter_sql([${filters}])`,
    `rows = ${call}`,
    "print(rows.to_pandas())",
  ].join("\n");
}

async function copy(text, what) {
  document.body.dataset.copied = text;
  try {
    await navigator.clipboard.writeText(text);
    status(`${what} copied`);
  } catch (_) {  // no clipboard (plain HTTP on another host): show it to copy by hand
    status(`${what}: ${text}`);
  }
}

// ---- keyboard ----------------------------------------------------------------------------
function columns() {
  const cards = $("results").children;
  if (cards.length < 2) return 1;
  const top = cards[0].getBoundingClientRect().top;
  let n = 0;
  for (const c of cards) { if (c.getBoundingClientRect().top !== top) break; n += 1; }
  return Math.max(1, n);
}

function focusCard(i) {
  const cards = $("results").children;
  if (!cards.length) return;
  i = Math.max(0, Math.min(cards.length - 1, i));
  for (const c of cards) c.classList.remove("focused");
  cards[i].classList.add("focused");
  cards[i].focus();
  state.focused = i;
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing) { event.preventDefault(); setType("text"); $("q").focus(); return; }
  if (typing) return;
  const cards = $("results").children;
  const card = state.focused >= 0 ? cards[state.focused] : null;
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
  if (event.key in moves) {
    event.preventDefault();
    focusCard(state.focused < 0 ? 0 : state.focused + moves[event.key]);
  } else if ((event.key === "Enter" || event.key === " ") && card && document.activeElement === card) {
    event.preventDefault();
    play(card);
  } else if (event.key === "m" && card) {
    moreLikeThis(card.dataset.clipId);
  } else if (event.key === "Escape" && card) {
    stop(card);
  }
});

// ---- wiring ------------------------------------------------------------------------------
window.addEventListener("popstate", () => {
  const p = new URLSearchParams(location.search);
  applyQuery(p);
  if (p.get("q") || p.get("clip_id") || p.get("video_id")) run(withType(p), { push: false });
  else { $("results").replaceChildren(); status(""); $("more").hidden = true; }
});

function withType(p) {
  const out = new URLSearchParams(p);
  if (!out.get("type")) out.set("type", p.get("clip_id") || p.get("video_id") ? "similar" : "text");
  return out;
}

async function main() {
  await loadTable();
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => setType(tab.dataset.type));
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.type === "similar") setType("text");
    run(formQuery());
  });
  $("file").addEventListener("change", () => {
    state.file = $("file").files[0] || null;
    if (state.file) run(formQuery());
  });
  // The switch applies at once to the search on screen (any type), like a new search.
  $("dedup").addEventListener("change", () => {
    if (!state.query) return;
    const p = new URLSearchParams(state.query);
    if (dedupOn()) p.set("dedup", "true"); else p.delete("dedup");
    run(p);
  });
  $("add-filter").addEventListener("click", () => { const input = addFilter(); if (input) input.focus(); });
  $("more").addEventListener("click", () => state.query && run(state.query, { push: false, append: true }));
  $("copy-cli").addEventListener("click", () => copy(asCli(state.query || formQuery()), "CLI command"));
  $("copy-python").addEventListener("click", () => copy(asPython(state.query || formQuery()), "Python"));
  const p = new URLSearchParams(location.search);
  applyQuery(p);
  if (p.get("q") || p.get("clip_id") || p.get("video_id")) run(withType(p), { push: false });
  document.body.dataset.ready = "true";
}

main();
