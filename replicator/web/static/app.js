// The replicator's page: polls /api/state every second and /api/history every few, and draws
// them. Everything that comes from the databases is put in the page with textContent, never
// innerHTML, so a value such as "<script>" is shown as text (the server's CSP backs this up).
"use strict";

const STATE_MS = 1000;
const HISTORY_MS = 2000;
const HOUR_S = 3600;

const $ = (id) => document.getElementById(id);

function text(id, value) {
  const node = $(id);
  if (node) node.textContent = value == null ? "–" : String(value);
  return node;
}

function el(tag, value, cls) {
  const node = document.createElement(tag);
  if (value != null) node.textContent = String(value);
  if (cls) node.className = cls;
  return node;
}

function replaceChildren(node, children) {
  node.replaceChildren(...children);
}

function num(v, digits) {
  if (v == null || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function seconds(v) {
  if (v == null) return "–";
  if (v < 10) return num(v, 2) + " s";
  if (v < 120) return num(v, 1) + " s";
  if (v < 7200) return num(v / 60, 1) + " min";
  return num(v / 3600, 1) + " h";
}

function bytes(v) {
  if (v == null) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return num(v, i ? 1 : 0) + " " + units[i];
}

function rate(v, unit) {
  return v == null ? "–" : num(v, v < 10 ? 1 : 0) + " " + unit + "/s";
}

function health(id, ok, words) {
  const node = text(id, words);
  if (node) node.className = ok ? "good" : "bad";
}

function timeOf(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// -- state -------------------------------------------------------------------------------

function showState(data) {
  const st = data.status;
  if (!st) { text("sampled", data.message || "no sample yet"); return; }
  const det = data.details || {};
  const r = data.rates || {};
  text("pipeline", st.pipeline);
  text("direction", st.direction === "rev" ? "target → legacy (after cutover)" : "legacy → target");
  const w = st.writer || {};
  const writer = text("writer", "writer: " + (w.writer || "NONE") + ((w.problems || []).length ? " ⚠" : ""));
  writer.className = "badge " + (w.writer && !(w.problems || []).length ? "good" : "bad");
  writer.title = (w.problems || []).join("\n");
  const verdict = text("verdict", st.ready ? "READY" : "NOT READY");
  verdict.className = "badge " + (st.ready ? "good" : "bad");
  text("sampled", "sampled " + new Date(data.sampled_at * 1000).toLocaleTimeString("en-GB", { hour12: false }) + " in " + num(data.sample_ms) + " ms");

  const src = st.source;
  text("slot-name", src ? src.slot : "");
  text("slot-lag", src ? bytes(src.lag_bytes) : "–");
  text("slot-rate", rate(r.wal_bytes_per_s == null ? null : r.wal_bytes_per_s / 1000, "kB"));
  text("slot-retained", src ? bytes(src.retained_wal_bytes) : "–");
  if (!src) health("slot-health", false, "unreachable");
  else if (!src.slot_exists) health("slot-health", false, "no slot");
  else health("slot-health", src.slot_active && !["unreserved", "lost"].includes(src.wal_status),
    (src.slot_active ? "streaming" : "no capture attached") + (src.wal_status ? ", WAL " + src.wal_status : ""));

  const k = st.kafka;
  text("kafka-topic", k ? k.topic : "");
  text("kafka-lag", k ? num(k.messages_behind) : "–");
  text("kafka-rate", rate(r.messages_in_per_s, "msg"));
  text("kafka-partitions", k ? k.partitions.length : "–");
  if (!k) health("kafka-health", false, "unreachable");
  else health("kafka-health", !k.dlq_messages, k.dlq_messages ? k.dlq_messages + " dead letter(s)" : "ok");

  const t = st.target;
  text("e2e-lag", t ? seconds(t.end_to_end_lag_s) : "–");
  text("apply-rate", rate(r.rows_per_s, "rows"));
  text("apply-last", t && t.seconds_since_last_apply != null ? seconds(t.seconds_since_last_apply) + " ago" : "–");
  if (!t) health("apply-health", false, "unreachable");
  else health("apply-health", t.end_to_end_lag_s != null, t.end_to_end_lag_s == null ? "no heartbeat applied yet" : "applying");

  text("verdict-action", st.direction === "rev" ? "rollback" : "cutover");
  const vt = text("verdict-text", st.ready ? "yes" : "not yet");
  vt.className = "big " + (st.ready ? "good" : "bad");
  replaceChildren($("reasons"), st.reasons.map((x) => el("li", x)));

  showValidation(det.validation);
  showParity(det.parity);
  showVerified(det.verified || {});
  showRepair(det.repair);
  showBackfill(det.backfill_tables || [], t && t.backfill);
  const count = k ? num(k.dlq_messages) : "–";
  if (lettersShown && $("dlq-count").textContent !== count) showLetters();
  text("dlq-count", count);
  showRuns(det.runs || []);
  showDrift(t && t.schema_changes);

  const problems = [...st.unreachable.map((u) => u.part + ": " + u.message + (u.hint ? " — " + u.hint : "")), ...(det.problems || [])];
  $("unreachable").classList.toggle("hidden", problems.length === 0);
  replaceChildren($("unreachable-list"), problems.map((x) => el("li", x)));
}

function showValidation(v) {
  const box = $("validation");
  if (!v) { box.textContent = "no validation has run"; replaceChildren($("validation-tables"), []); return; }
  const outcome = el("strong", v.outcome, v.outcome === "clean" ? "good" : "bad");
  const when = " " + v.scope + " run, " + seconds(v.age_s) + " ago (" + new Date(v.finished_at).toLocaleString("en-GB", { hour12: false }) + "), " + num(v.rows_checked) + " rows checked, " + num(v.differences) + " differences";
  replaceChildren(box, [outcome, document.createTextNode(when)]);
  replaceChildren($("validation-tables"), v.tables.map((x) => el("li", x.table + (x.differences ? ": " + x.differences + " differences" : ": clean"), x.differences ? "bad" : "")));
}

function showParity(p) {
  const box = $("parity");
  if (!p) { box.textContent = "no parity run (replicator parity)"; replaceChildren($("parity-pairs"), []); return; }
  const outcome = el("strong", p.outcome, p.outcome === "pass" ? "good" : "bad");
  replaceChildren(box, [outcome, document.createTextNode(" " + p.pairs.length + " pairs, " + seconds(p.age_s) + " ago")]);
  replaceChildren($("parity-pairs"), p.pairs.map((x) => el("li", x.name + ": " + x.verdict + (x.target_p95_ms != null ? " (target p95 " + x.target_p95_ms + " ms)" : "") + (x.note ? " — " + x.note : ""), x.verdict === "agrees" ? "" : "bad")));
}

// Continuous validation: each table's verified-through point, or its differing keys.
function showVerified(points) {
  replaceChildren($("verified"), Object.entries(points).map(([table, p]) => {
    const through = p.verified_at ? "verified through " + timeOf(p.verified_at) + " (" + seconds(p.age_s) + " ago)" : "not verified yet";
    const pass = p.pass ? "; pass under way: " + num(p.pass.ranges) + " ranges, " + num(p.pass.rows) + " rows checked" : "";
    if (p.outcome !== "different") return el("li", table + ": " + through + pass);
    const li = el("li", table + ": different (" + num(p.differences) + ") — " + through, "bad");
    li.append(el("div", (p.keys || []).map((k) => JSON.stringify(k.key)).join(" "), "reason"));
    return li;
  }));
}

function showRepair(r) {
  const box = $("last-repair");
  if (!r) { box.textContent = ""; return; }
  const c = r.counts || {};
  box.textContent = "last repair " + r.id + " (" + seconds(r.age_s) + " ago): repaired " + num(c.repaired) + ", still different " + num(c.still_different) + ", refused " + num(c.refused);
  const left = (r.actions || []).filter((a) => a.result !== "repaired");
  box.append(...left.slice(0, 10).map((a) => el("div", a.result + ": " + a.table + " " + JSON.stringify(a.key) + (a.reason ? " — " + a.reason : ""), "reason")));
}

function showBackfill(tables, latest) {
  const rows = tables.map((b) => {
    const tr = el("tr");
    const pct = b.rows_total ? Math.min(100, (100 * b.rows_applied) / b.rows_total) : (b.status === "applied" ? 100 : 0);
    const bar = el("div", null, "bar");
    const fill = el("div", null, "fill");
    fill.style.width = pct.toFixed(1) + "%";
    bar.append(fill);
    const barCell = el("td");
    barCell.append(bar);
    const path = el("td", b.path === "sql" ? "sql" : "python");
    path.title = b.path;  // python: why the table is not loaded by compiled SQL
    tr.append(el("td", b.table), path, el("td", num(b.rows_applied)), el("td", num(b.rows_total)), barCell);
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", latest ? "backfill " + latest.status : "no backfill has run"));
    rows.push(tr);
  }
  replaceChildren($("backfill").tBodies[0], rows);
  // Indexes and foreign keys a first backfill set aside while it loads (docs/status.md): the
  // target lacks them until apply rebuilds them, once the table's snapshot is loaded.
  const aside = (latest && latest.set_aside) || [];
  replaceChildren($("set-aside"), aside.map((o) => el("li", "set aside on " + o.table + ": " + o.kind + " " + o.name + " — `replicator run` rebuilds it once the table's snapshot is loaded", "reason")));
}

// Schema changes on the source, judged through the mapping (docs/drift.md); newest first.
function showDrift(sc) {
  const changes = (sc && sc.changes) || [];
  const blocking = changes.filter((c) => c.blocks_cutover).length;
  const counts = sc && sc.counts ? Object.entries(sc.counts).map(([v, n]) => n + " " + v).join(", ") : "";
  text("drift-summary", changes.length ? counts + (blocking ? " — " + blocking + " block(s) the cutover" : "") : "no schema change seen")
    .className = blocking ? "bad" : "muted";
  replaceChildren($("drift").tBodies[0], changes.slice().reverse().map((c) => {
    const tr = el("tr");
    const state = c.resolved_at ? "resolved: " + c.resolution : (c.blocks_cutover ? "BLOCKS CUTOVER" : "open");
    tr.append(el("td", String(c.id)), el("td", c.lsn + " " + timeOf(c.seen_at)), el("td", c.tag + " " + (c.table || "") + " (" + c.via + ")"),
      el("td", c.verdict, c.verdict === "needs_mapping_change" ? "bad" : (c.verdict === "compatible" ? "" : "good")),
      el("td", c.reason + (c.fix ? " — fix: " + c.fix : "")), el("td", state, c.blocks_cutover ? "bad" : ""));
    return tr;
  }));
}

function showRuns(runs) {
  const body = $("journal").tBodies[0];
  if (!runs.length) { replaceChildren(body, []); return; }
  const run = runs[0];
  const summary = run.action + " " + run.run_id + ": " + run.result + (run.pause_ms != null ? " — write pause " + num(run.pause_ms, 1) + " ms" : "") + " (" + seconds(run.age_s) + " ago)";
  text("run-summary", summary).className = run.result.startsWith("aborted") ? "bad" : (run.result === "running" ? "" : "good");
  replaceChildren(body, run.steps.map((s) => {
    const tr = el("tr");
    tr.append(el("td", s.step), el("td", timeOf(s.started_at)), el("td", num(s.duration_ms, 1) + " ms"),
      el("td", s.ok ? "ok" : "FAILED", s.ok ? "good" : "bad"), el("td", s.detail));
    return tr;
  }));
  replaceChildren($("earlier-runs"), runs.slice(1).map((x) => el("li", x.action + " " + x.run_id + ": " + x.result + (x.pause_ms != null ? ", pause " + num(x.pause_ms, 1) + " ms" : "") + ", " + seconds(x.age_s) + " ago")));
}

// -- dead letters ------------------------------------------------------------------------

let lettersShown = false;

// Shown on request (the link), then kept current while the count changes.
async function showLetters(ev) {
  if (ev) ev.preventDefault();
  lettersShown = true;
  const list = $("dlq-list");
  if (!list.children.length) replaceChildren(list, [el("li", "reading the DLQ…", "plain")]);
  try {
    const data = await (await fetch("api/dlq")).json();
    if (data.error) { replaceChildren(list, [el("li", data.error + (data.hint ? " — " + data.hint : ""), "bad")]); return; }
    if (!data.letters.length) { replaceChildren(list, [el("li", "none", "plain")]); return; }
    replaceChildren(list, data.letters.map((x) => {
      const li = el("li");
      li.append(el("code", x.position), document.createTextNode(" " + (x.table || "?") + " "),
        el("code", JSON.stringify(x.key)), el("div", x.error + ": " + x.reason, "reason"));
      return li;
    }));
  } catch (e) {
    replaceChildren(list, [el("li", "could not read the DLQ: " + e, "bad")]);
  }
}

// -- chart -------------------------------------------------------------------------------

let chart = null;

function chartWidth() {
  return Math.max(300, $("chart").clientWidth || 600);
}

function showHistory(h) {
  const data = [h.t, h.lag_s, h.rows_per_s];
  const points = h.lag_s.filter((v) => v != null).length;
  $("chart").dataset.points = String(points);
  if (!chart) {
    chart = new uPlot({
      width: chartWidth(),
      height: 220,
      series: [
        {},
        { label: "lag (s)", stroke: "#d9480f", width: 2, scale: "s", spanGaps: false, value: (u, v) => v == null ? "–" : v.toFixed(2) },
        { label: "rows/s", stroke: "#1c7ed6", width: 1.5, scale: "r", value: (u, v) => v == null ? "–" : num(v) },
      ],
      axes: [{}, { scale: "s", label: "s" }, { scale: "r", side: 1, grid: { show: false }, label: "rows/s" }],
      scales: { s: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] }, r: { range: (u, lo, hi) => [0, Math.max(10, hi * 1.1)] } },
    }, data, $("chart"));
    window.addEventListener("resize", () => chart.setSize({ width: chartWidth(), height: 220 }));
  } else {
    chart.setData(data);
  }
}

// -- polling -----------------------------------------------------------------------------

let span = HOUR_S;

function historyUrl() {
  return "api/history?span=" + span + "&points=720";
}

function chooseSpan(ev) {
  ev.preventDefault();
  span = Number(ev.currentTarget.dataset.span);
  text("chart-title", span === HOUR_S ? "Last hour" : "Last 24 hours");
  fetch(historyUrl(), { cache: "no-store" }).then((r) => r.json()).then(showHistory).catch(() => {});
}

// `url` is a string or a function giving one (the chart's span can change between polls).
async function poll(url, show, every) {
  try {
    const resp = await fetch(typeof url === "function" ? url() : url, { cache: "no-store" });
    if (resp.ok) show(await resp.json());
    document.body.classList.remove("offline");
  } catch (e) {
    document.body.classList.add("offline");
    text("sampled", "the replicator's web server does not answer");
  }
  setTimeout(() => poll(url, show, every), every);
}

$("dlq-link").addEventListener("click", showLetters);
poll("api/state", showState, STATE_MS);
$("span-1h").addEventListener("click", chooseSpan);
$("span-24h").addEventListener("click", chooseSpan);
poll(historyUrl, showHistory, HISTORY_MS);
