// The guard console's page: hash routes over the console's JSON API. No library, no build step:
// this file is embedded in the guardlab binary as it is.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

let state = null;          // /api/state
const ui = {               // what the person chose, kept across redraws
  selectedFingerprints: new Set(),
  graphDeviations: {},     // policy uid -> Set of deviation uids added to its graph
  investigate: null,       // deviation uids to investigate (null: all)
  tab: "graph",
  busy: false,
};

async function api(path, options = {}) {
  const init = { headers: { "content-type": "application/json" }, ...options };
  if (init.body && typeof init.body !== "string") init.body = JSON.stringify(init.body);
  const r = await fetch(path, init);
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body && body.error ? body.error : `${r.status} ${r.statusText}`);
  return body;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { page: parts[0] || "fingerprints", arg: parts[1] ? decodeURIComponent(parts[1]) : null };
}

// `soft`: a live change, not the person's click. A page the person is working in (a form, a
// selection) is not redrawn under their hands; its counts are.
async function refresh(soft = false) {
  state = await api("/api/state");
  $("#title").textContent = state.title;
  $("#flag-count").textContent = state.flags;
  showWorkshop(state.workshop);
  const { page, arg } = route();
  if (soft && page === "policies" && arg && ui.tab !== "graph") {
    const p = state.policies.find((x) => x.uid === arg || x.name === arg);
    if (p && $("#tab-deviations")) $("#tab-deviations").textContent = `Deviations (${p.unique})`;
    if (p && $("#policy-status")) $("#policy-status").textContent = p.status;
    return;
  }
  await render(soft);
}

async function render(soft = false) {
  const { page, arg } = route();
  $$("header nav a").forEach((a) => a.classList.toggle("active", a.id === `nav-${page}`));
  const main = $("#page");
  try {
    // Pages drawn at once still end any draw begun before (it would replace them).
    if (page === "fingerprints" || (page === "policies" && !arg)) beginDraw(true);
    if (page === "fingerprints") renderFingerprints(main);
    else if (page === "policies" && arg) await renderPolicy(main, arg, soft);
    else if (page === "policies") renderPolicies(main);
    else if (page === "investigation") await renderInvestigation(main, soft);
    else if (page === "flags") { await renderFlags(main, soft); if (!soft) viewed("flags"); }
    else main.innerHTML = `<p>No page ${esc(page)}.</p>`;
  } catch (e) {
    main.innerHTML = `<p class="error" id="page-error">${esc(e.message)}</p>`;
  }
}

// ---- Fingerprints -------------------------------------------------------------------------
function renderFingerprints(main) {
  if ($("#fp-page", main)) { fillFingerprintRows(); return; }
  const namespaces = [...new Set(state.fingerprints.map((f) => f.namespace))];
  main.innerHTML = `
    <div id="fp-page">
    <h2>Fingerprints</h2>
    <p class="muted">One per image: what the container's processes did while the baseline ran,
    and whom they talked to. Select the notebook's and make a policy of it.</p>
    <div class="filters">
      <input id="fp-search" placeholder="Search">
      <select id="fp-namespace"><option value="">All namespaces</option>
        ${namespaces.map((n) => `<option>${esc(n)}</option>`).join("")}</select>
      <select id="fp-status"><option value="">Any status</option><option>learning</option><option>final</option></select>
    </div>
    <table><thead><tr><th></th><th>Name</th><th>Image</th><th>Namespace</th><th>Status</th>
      <th>Processes</th><th>Egress</th><th>Ingress</th></tr></thead><tbody id="fp-rows"></tbody></table>
    <button id="create-policy" class="primary">Create policy</button>
    <div id="policy-preview"></div>
    <div id="fp-detail"></div>
    </div>`;
  for (const id of ["#fp-search", "#fp-namespace", "#fp-status"]) $(id).addEventListener("input", fillFingerprintRows);
  $("#create-policy").addEventListener("click", previewPolicy);
  fillFingerprintRows();
}

function fillFingerprintRows() {
  const q = $("#fp-search").value.toLowerCase();
  const ns = $("#fp-namespace").value;
  const st = $("#fp-status").value;
  const rows = state.fingerprints.filter((f) =>
    (!q || `${f.name} ${f.image} ${f.containerName}`.toLowerCase().includes(q)) &&
    (!ns || f.namespace === ns) && (!st || f.status === st));
  $("#fp-rows").innerHTML = rows.map((f) => `
    <tr class="fingerprint" data-name="${esc(f.name)}">
      <td><input type="checkbox" class="fp-select" value="${esc(f.name)}"
        ${ui.selectedFingerprints.has(f.name) ? "checked" : ""}></td>
      <td><a href="#" class="fp-open">${esc(f.name)}</a></td><td>${esc(f.image)}</td>
      <td>${esc(f.namespace)}</td><td>${esc(f.status)}</td><td>${f.processes}</td>
      <td>${f.egress}</td><td>${f.ingress}</td></tr>`).join("") ||
    `<tr><td colspan="8" class="muted">No fingerprint yet: the baseline has not run.</td></tr>`;
  $$(".fp-select").forEach((box) => box.addEventListener("change", () => {
    box.checked ? ui.selectedFingerprints.add(box.value) : ui.selectedFingerprints.delete(box.value);
  }));
  $$(".fp-open").forEach((a) => a.addEventListener("click", async (ev) => {
    ev.preventDefault();
    const f = await api(`/api/fingerprints/${encodeURIComponent(a.textContent)}`);
    $("#fp-detail").innerHTML = `<h3>${esc(f.name)}</h3><div class="graph" id="fingerprint-graph">${f.svg}</div><pre>${esc(f.yaml)}</pre>`;
  }));
}

async function previewPolicy() {
  const box = $("#policy-preview");
  try {
    const p = await api("/api/policies/preview", { method: "POST",
      body: { fingerprints: [...ui.selectedFingerprints], mode: "audit" } });
    box.innerHTML = `
      <h3>Create policy</h3>
      <label>Name <input id="policy-name" value="${esc(p.name)}"></label>
      <label>Mode <select id="policy-mode"><option value="audit" selected>Audit</option>
        <option value="enforce">Enforcing</option></select></label>
      <p class="muted">The policy's YAML, as it will be saved. You may edit it.</p>
      <textarea id="preview-yaml">${esc(p.yaml)}</textarea>
      <button id="save-policy" class="primary">Save policy</button>
      <span id="preview-error" class="error"></span>`;
    $("#save-policy").addEventListener("click", savePolicy);
  } catch (e) {
    box.innerHTML = `<p class="error" id="preview-error">${esc(e.message)}</p>`;
  }
}

async function savePolicy() {
  try {
    const made = await api("/api/policies", { method: "POST", body: {
      fingerprints: [...ui.selectedFingerprints], name: $("#policy-name").value,
      mode: $("#policy-mode").value, yaml: $("#preview-yaml").value } });
    location.hash = `#/policies/${encodeURIComponent(made.uid)}`;
  } catch (e) {
    $("#preview-error").textContent = e.message;
  }
}

// ---- Policies -----------------------------------------------------------------------------
function renderPolicies(main) {
  main.innerHTML = `<h2>Policies</h2>
    <table><thead><tr><th>Name</th><th>Status</th><th>Mode</th><th>Enabled</th><th>Deviations (unique / total)</th></tr></thead>
    <tbody>${state.policies.map((p) => `
      <tr class="policy" data-uid="${esc(p.uid)}"><td><a href="#/policies/${encodeURIComponent(p.uid)}">${esc(p.name)}</a></td>
      <td><span class="badge ${esc(p.status)}">${esc(p.status)}</span></td><td>${esc(p.mode)}</td>
      <td>${p.enabled ? "yes" : "no"}</td><td>${p.unique} / ${p.total}</td></tr>`).join("") ||
      `<tr><td colspan="5" class="muted">No policy yet: make one from a fingerprint.</td></tr>`}</tbody></table>`;
}

// Tell the console what the person opened (a workshop's "look at" steps wait for it).
function viewed(page) {
  if (page) api("/api/viewed", { method: "POST", body: { page } }).catch(() => {});
}

// Pages are drawn after fetches: a draw that a newer one began after (a live refresh, a
// click) is dropped, so an older answer never replaces what the person is using. A dropped
// draw the person asked for leaves its "viewed" to the one that replaced it.
let drawing = 0;
function beginDraw(soft) {
  if (!soft) ui.wantViewed = true;
  return ++drawing;
}
function superseded(ticket) { return ticket !== drawing; }
function takeViewed() { const want = ui.wantViewed; ui.wantViewed = false; return want; }

async function renderPolicy(main, uid, soft = false) {
  const ticket = beginDraw(soft);
  const p = await api(`/api/policies/${encodeURIComponent(uid)}`);
  const added = ui.graphDeviations[p.uid] || (ui.graphDeviations[p.uid] = new Set());
  const scroll = $(".graph", main)?.scrollLeft;
  const svg = await api(`/api/policies/${encodeURIComponent(p.uid)}/graph.svg?deviations=${[...added].join(",")}`);
  if (superseded(ticket)) return;
  main.innerHTML = `
    <h2 id="policy-title">${esc(p.name)} <span class="badge ${esc(p.status)}" id="policy-status">${esc(p.status)}</span></h2>
    <div class="tabs"><button data-tab="graph" id="tab-graph">Graph</button>
      <button data-tab="deviations" id="tab-deviations">Deviations (${p.unique})</button>
      <button data-tab="info" id="tab-info">Policy info</button></div>
    <section id="tab-body"></section>`;
  $$(".tabs button").forEach((b) => {
    b.classList.toggle("active", b.dataset.tab === ui.tab);
    b.addEventListener("click", () => { ui.tab = b.dataset.tab; renderPolicy(main, uid); });
  });
  const body = $("#tab-body");
  if (takeViewed()) viewed(ui.tab === "deviations" ? "deviations" : ui.tab === "graph" ? "policy-graph" : null);
  if (ui.tab === "graph") {
    body.innerHTML = `<p class="muted">The policy's processes, with their connections hanging off them;
      deviations you added are drawn in red. Click the graph for its actual size.</p><div class="graph" id="policy-graph">${svg}</div>`;
    if (scroll) $(".graph", main).scrollLeft = scroll;
  } else if (ui.tab === "deviations") {
    body.innerHTML = `
      <p id="deviation-counts">${p.unique} unique deviation${p.unique === 1 ? "" : "s"}, seen
      ${p.total} time${p.total === 1 ? "" : "s"} in all: a unique deviation is one behaviour outside the
      policy (a process, or a connection); the total counts every time it happened.</p>
      <button id="select-all-deviations">Select all</button>
      <button id="add-to-graph">Add to graph</button>
      <button id="merge-into-policy">Merge into policy</button>
      <button id="investigate-selected">Investigate</button>
      <span id="deviation-message" class="muted"></span>
      <table><thead><tr><th></th><th>Type</th><th>What</th><th>Count</th><th>Changes the policy</th></tr></thead><tbody>
      ${p.deviations.map((d) => `<tr class="deviation deviant" data-uid="${esc(d.uid)}">
        <td><input type="checkbox" class="dev-select" value="${esc(d.uid)}"></td><td>${esc(d.type)}</td>
        <td>${esc(d.summary)}</td><td>${d.count}</td><td>${d.relevant ? "yes" : "no"}</td></tr>`).join("")}
      </tbody></table>`;
    const chosen = () => $$(".dev-select").filter((b) => b.checked).map((b) => b.value);
    $("#select-all-deviations").addEventListener("click", () => $$(".dev-select").forEach((b) => (b.checked = true)));
    $("#add-to-graph").addEventListener("click", () => {
      chosen().forEach((d) => added.add(d));
      ui.tab = "graph"; renderPolicy(main, uid);
    });
    $("#merge-into-policy").addEventListener("click", async () => {
      const r = await api(`/api/policies/${encodeURIComponent(p.uid)}/merge`, { method: "POST", body: { deviations: chosen() } });
      $("#deviation-message").textContent = `${r.merged} merged into the policy`;
    });
    $("#investigate-selected").addEventListener("click", () => {
      const c = chosen(); ui.investigate = c.length ? c : null; location.hash = "#/investigation";
    });
  } else {
    body.innerHTML = `
      <p><label>Mode <select id="info-mode"><option value="audit">Audit</option><option value="enforce">Enforcing</option></select></label>
      <label><input type="checkbox" id="info-enabled"> Enabled</label>
      <label>Add a response <select id="info-kill"><option value="">(none)</option>
        <option value="agentKillProcess">kill the process</option>
        <option value="agentKillProcessGroup">kill its process group</option>
        <option value="agentKillProcessTree">kill its process tree</option>
        <option value="agentKillPod">kill the pod</option></select></label>
      <button id="info-save" class="primary">Save</button> <span id="info-message" class="muted"></span></p>
      <h3>Response actions</h3><pre id="info-response">${esc(JSON.stringify(p.response, null, 2))}</pre>
      <h3>YAML</h3><pre id="policy-yaml">${esc(p.yaml)}</pre>`;
    $("#info-mode").value = p.mode;
    $("#info-enabled").checked = p.enabled;
    $("#info-save").addEventListener("click", async () => {
      const r = await api(`/api/policies/${encodeURIComponent(p.uid)}`, { method: "POST",
        body: { mode: $("#info-mode").value, enabled: $("#info-enabled").checked,
          ...($("#info-kill").value ? { addKill: $("#info-kill").value } : {}) } });
      $("#info-message").textContent = `saved: ${r.status}`;
      $("#policy-status").textContent = r.status;
    });
  }
}

// ---- Investigation and flags --------------------------------------------------------------
async function renderInvestigation(main, soft = false) {
  const q = ui.investigate ? `?deviations=${ui.investigate.join(",")}` : "";
  const ticket = beginDraw(soft);
  const [svg, inv] = await Promise.all([api(`/api/investigation.svg${q}`), api("/api/investigation")]);
  if (superseded(ticket)) return;
  main.innerHTML = `<h2>Investigation</h2>
    <p class="muted">One causal graph from the container's root process to every deviant process and
    connection${ui.investigate ? ` (the ${ui.investigate.length} selected deviations)` : ""}. An exec that
    replaced a process's program is drawn as a dashed <em>exec</em> edge, not as a child. Click the
    graph for its actual size.</p>
    <div class="graph" id="investigation-graph">${svg}</div>
    <h3>As text</h3><pre id="investigation-text">${esc(inv.text)}</pre>`;
  if (takeViewed()) viewed("investigation");
}

async function renderFlags(main, soft = false) {
  const ticket = beginDraw(true);
  const { flags } = await api("/api/flags");
  if (superseded(ticket)) return;
  main.innerHTML = `<h2>Flags</h2><p class="muted">Red flags, newest first.</p><ol id="flags">
    ${flags.map((f) => `<li class="flag" data-deviation="${esc(f.deviationUid)}">
      <strong class="deviant-text">${esc(f.severity)}</strong> ${esc(f.class)} — ${esc(f.process)} (pid ${f.pid})
      ${esc(f.content || "")} — shown ${Math.max(0, Date.now() - f.eventNs / 1e6).toFixed(0)} ms after its kernel event — policy <a href="#/policies/${encodeURIComponent(f.policyUid)}">${esc(f.policyName)}</a>,
      deviation <code>${esc(f.deviationUid)}</code>,
      <a href="#" class="flag-trace" data-deviation="${esc(f.deviationUid)}">trace</a></li>`).join("")}</ol>`;
  $$(".flag-trace").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault(); ui.investigate = [a.dataset.deviation]; location.hash = "#/investigation";
  }));
}

// One refresh at a time; changes that come during one are shown by one more after it.
function softRefresh() {
  if (ui.busy) { ui.again = true; return; }
  ui.busy = true;
  refresh(true).catch(() => {}).finally(() => {
    ui.busy = false;
    if (ui.again) { ui.again = false; softRefresh(); }
  });
}

// ---- Workshop ---------------------------------------------------------------------------
// A paced run (`--step --console`) waits at a step: what it is, what the learner may do, and a
// button that has guardlab do it instead (as Enter in the trainer's terminal).
function showWorkshop(step) {
  const banner = $("#workshop-banner");
  if (!step) { banner.hidden = true; banner.innerHTML = ""; return; }
  if (banner.dataset.step === String(step.number) && !banner.hidden) return;
  banner.dataset.step = String(step.number);
  banner.hidden = false;
  banner.innerHTML = `<h3>Step ${step.number} of ${step.of}: ${esc(step.name)}</h3>
    <p>${esc(step.explain)}</p><p><strong id="workshop-task">${esc(step.task)}</strong></p>
    <button id="workshop-go">Have guardlab do it</button> <span id="workshop-message" class="muted"></span>`;
  $("#workshop-go").addEventListener("click", async () => {
    try {
      await api("/api/workshop/go", { method: "POST" });
      $("#workshop-message").textContent = "guardlab does it…";
    } catch (e) {
      $("#workshop-message").textContent = e.message;
    }
  });
}

// ---- Live ---------------------------------------------------------------------------------
function live() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { $("#live-status").textContent = "live"; });
  source.addEventListener("error", () => { $("#live-status").textContent = "reconnecting…"; });
  source.addEventListener("change", (ev) => {
    const shown = Date.now();
    const data = JSON.parse(ev.data);
    for (const [, change] of data.changes || []) {
      if (change.kind !== "deviation" && change.kind !== "flag") continue;
      const li = document.createElement("li");
      li.className = `live-${change.kind}`;
      const ms = Math.max(0, shown - change.event_ns / 1e6);
      li.textContent = change.kind === "flag"
        ? `flag (${change.severity}) for ${change.deviation_uid}: shown ${ms.toFixed(0)} ms after the kernel event`
        : `${change.type} deviation ${change.deviation_uid}: shown ${ms.toFixed(0)} ms after the kernel event`;
      $("#live-log").prepend(li);
    }
    softRefresh();
  });
}

// A click on a graph switches every graph between fitting its box and its actual size.
document.addEventListener("click", (ev) => {
  if (ev.target.closest && ev.target.closest(".graph")) document.body.classList.toggle("graphs-actual-size");
});

window.addEventListener("hashchange", () => render());
refresh().then(live);
