/* Tailor UI: a single page over the public admin API (see decision_api/routes/ui.py).
 *
 * The API key typed into the login form is kept in sessionStorage (this tab only, never in a
 * URL) and sent as "Authorization: Bearer" with every call. POST /ui/session checks it and sets
 * the report pages' HttpOnly cookie, so links to /reports/{key} open without the key.
 * No framework, no build step, nothing from another host; every text goes in via textContent.
 */
"use strict";

const KEY_ITEM = "tailor.apiKey";
const EXTRA_KEYS = ["kind", "send_time", "salt", "reward", "frequency_cap"];
const DEFAULT_REWARD = { rules: null, aggregation: "first", default: 0.0, min_reward: 0.0, max_reward: 1.0 };
const STATUS_ORDER = { running: 0, paused: 1, draft: 2, stopped: 3 };
const SCOPES = ["admin", "decide", "ingest", "report"];

/* Each policy's settings: [name, type, hint]; type is number, int, text, list (comma-separated),
 * args (space-separated) or a list of choices. A blank input leaves the API's default. */
const POLICIES = {
  fixed: [],
  thompson: [
    ["prior_alpha", "number", "Beta prior successes (default 1)"],
    ["prior_beta", "number", "Beta prior failures (default 1)"],
    ["segment_by", "text", "context attribute with its own posterior"],
    ["min_segment_trials", "int", "default 1"],
    ["max_segments", "int", "default 1000"],
    ["min_share", "number", "exploration floor, default 0"],
    ["min_propensity", "number", "default 0.1 / number of variants"],
    ["mc_samples", "int", "default 20000"],
  ],
  epsilon_greedy: [
    ["epsilon", "number", "exploration share, default 0.1"],
    ["min_propensity", "number", "default 0.1 / number of variants"],
  ],
  vw_cb: [
    ["exploration", ["squarecb", "epsilon"], "default squarecb"],
    ["epsilon", "number", "default 0.05"],
    ["gamma_scale", "number", "default 10"],
    ["gamma_exponent", "number", "default 0.5"],
    ["learning_rate", "number", "default 0.01"],
    ["interactions", "list", "default UA"],
    ["extra_args", "args", "further VW options, e.g. --l2 1e-6"],
    ["min_propensity", "number", "default 0.1 / number of variants"],
  ],
  send_time_thompson: [
    ["n_hours", "int", "24 or 168"],
    ["prior_alpha", "number", "default 1"],
    ["prior_beta", "number", "default 1"],
    ["history_weight", "number", "default 1"],
    ["history_prior", "number", "default 8"],
    ["smoothing", "number", "default 0.2"],
    ["population_cap", "number", "default 1000"],
    ["min_share", "number", "default 0.1"],
    ["mc_draws", "int", "default 16"],
  ],
};

let session = null; // {key_id, scopes, open} once logged in
let pending = null; // [kind, text]: a notice for the next page drawn (after a save or an action)

/* ---------- DOM helpers ---------- */

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function field(label, path, control, hint) {
  control.setAttribute("data-path", path);
  if (!control.id) control.id = "f-" + path.replace(/[^A-Za-z0-9]+/g, "-");
  return h("label", { class: "field", for: control.id },
    h("span", { class: "label", text: label }),
    control,
    hint ? h("span", { class: "hint", text: hint }) : null,
    h("span", { class: "error", "data-error-for": path, role: "alert" }));
}

function app() { return document.getElementById("app"); }

function render(...nodes) {
  const main = app();
  main.replaceChildren(...nodes);
}

function banner(kind, text) { return h("div", { class: "banner " + kind, role: "status", text }); }

/* ---------- API ---------- */

function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(method, path, body) {
  const headers = { Accept: "application/json", ...authHeaders() };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: { detail: "The API cannot be reached: " + err.message } };
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { detail: text }; }
  }
  if (response.status === 401 && path !== "/ui/session") {
    sessionStorage.removeItem(KEY_ITEM);
    showLogin((data && data.detail) || "Your API key is no longer accepted; log in again.");
  }
  return { ok: response.ok, status: response.status, data };
}

function problemText(result) {
  const d = result.data || {};
  return d.detail || d.title || "HTTP " + result.status;
}

function isAdmin() { return session !== null && session.scopes.includes("admin"); }

/* ---------- Field errors: map problem-details errors[].field ($.variants[1].payload) ---------- */

function clearErrors(form) {
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
}

function parentPath(path) { return path.replace(/(\.[^.[\]]+|\[\d+\])$/, ""); }

function controlFor(form, path) {
  let current = path;
  for (;;) {
    const el = form.querySelector(`[data-path="${CSS.escape(current)}"]`);
    if (el) return [el, current];
    const top = current.match(/^\$\.([A-Za-z_]+)/);
    if (top && EXTRA_KEYS.includes(top[1])) {
      const extra = form.querySelector('[data-path="$.extra"]');
      if (extra) return [extra, "$.extra"];
    }
    const up = parentPath(current);
    if (up === current) return [null, "$"];
    current = up;
  }
}

function showError(form, rawPath, message) {
  let path = rawPath || "$";
  if (!path.startsWith("$")) path = "$." + path;
  const [control, at] = controlFor(form, path);
  const text = at === path ? message : `${path}: ${message}`;
  const slot = form.querySelector(`[data-error-for="${CSS.escape(at)}"]`);
  if (slot) slot.textContent = slot.textContent ? slot.textContent + " " + text : text;
  if (control) {
    control.classList.add("invalid");
    control.setAttribute("aria-invalid", "true");
  }
}

function showProblem(form, result) {
  const errors = (result.data && result.data.errors) || [];
  if (errors.length === 0) showError(form, "$", problemText(result));
  for (const e of errors) showError(form, e.field, e.message);
  const first = form.querySelector(".invalid");
  if (first) first.focus();
}

/* ---------- Login ---------- */

function showLogin(message) {
  session = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { type: "password", autocomplete: "off", name: "key" });
  const form = h("form", { class: "card", id: "login", novalidate: true },
    h("h1", { text: "Log in" }),
    h("p", { class: "note", text: "An API key with the admin scope manages experiments and keys; a key with the report scope opens reports. The key stays in this browser tab (sessionStorage) and is sent as Authorization: Bearer." }),
    field("API key", "$.key", input),
    h("span", { class: "error", "data-error-for": "$", role: "alert" }),
    h("p", {}, h("button", { type: "submit", class: "primary", text: "Log in" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const key = input.value.trim();
    if (!key) { showError(form, "$.key", "Enter an API key."); return; }
    const result = await startSession(key);
    if (!result.ok) { showError(form, "$.key", problemText(result)); return; }
    sessionStorage.setItem(KEY_ITEM, key);
    enter(result.data);
  });
  render(message ? banner("problem", message) : "", form);
  input.focus();
}

async function startSession(key) {
  const headers = key ? { Authorization: "Bearer " + key } : {};
  try {
    const r = await fetch("/ui/session", { method: "POST", headers, credentials: "same-origin" });
    const data = await r.json().catch(() => ({}));
    return { ok: r.ok, status: r.status, data };
  } catch (err) {
    return { ok: false, status: 0, data: { detail: "The API cannot be reached: " + err.message } };
  }
}

function enter(data) {
  session = data;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = session.open;
  document.getElementById("who").textContent = session.open
    ? "development mode (no keys configured)"
    : `${session.key_id} · ${session.scopes.join(", ")}`;
  for (const a of document.querySelectorAll("[data-nav=new], [data-nav=keys]")) a.hidden = !isAdmin();
  route();
}

async function logout() {
  await api("DELETE", "/ui/session");
  sessionStorage.removeItem(KEY_ITEM);
  showLogin("Logged out.");
}

/* ---------- Experiments list ---------- */

async function viewExperiments() {
  if (!isAdmin()) { viewReportOnly(); return; }
  render(h("h1", { text: "Experiments" }), h("p", { class: "note", text: "Loading…" }));
  const [list, kill] = await Promise.all([api("GET", "/v1/experiments"), api("GET", "/v1/kill-switch")]);
  if (session === null) return;
  if (!list.ok) { render(h("h1", { text: "Experiments" }), banner("problem", problemText(list))); return; }
  const experiments = list.data.experiments.slice().sort((a, b) =>
    (STATUS_ORDER[a.status] - STATUS_ORDER[b.status]) || a.key.localeCompare(b.key));
  const rows = experiments.map(experimentRow);
  const table = experiments.length
    ? h("table", { id: "experiments" },
        h("thead", {}, h("tr", {}, ["Experiment", "Placement", "Status", "Policy", "Result", ""].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows.map((r) => r.tr)))
    : h("p", { class: "note" }, "No experiments yet. ", h("a", { href: "#/new", text: "Create the first one." }));
  render(h("h1", { text: "Experiments" }), killSwitch(kill), noticeSlot(),
    h("p", {}, h("a", { href: "#/new", text: "+ New experiment" })), table);
  for (const r of rows) await r.loadResult(); // one report at a time: reports are queries
}

function killSwitch(result) {
  if (!result.ok) return banner("problem", "Kill switch: " + problemText(result));
  const { engaged, forced } = result.data;
  const text = engaged
    ? "Kill switch ENGAGED: every placement serves its default variant."
    : "Kill switch released: experiments serve normally.";
  const button = h("button", {
    type: "button", id: "kill-switch", class: engaged ? "" : "danger",
    disabled: forced, text: engaged ? "Release kill switch" : "Engage kill switch",
    onclick: async () => {
      if (!engaged && !confirm("Engage the kill switch? Every placement will serve its default variant until it is released.")) return;
      const r = await api("PUT", "/v1/kill-switch", { engaged: !engaged });
      if (!r.ok) { notice("problem", problemText(r)); return; }
      // Draw the state the PUT answered: a GET could reach a worker that has not polled yet.
      document.getElementById("kill-banner").replaceWith(killSwitch(r));
    },
  });
  return h("div", { class: "banner" + (engaged ? " engaged" : ""), id: "kill-banner" },
    h("span", { text }), button, forced ? h("span", { class: "note", text: "(forced by the server's settings)" }) : null);
}

function notice(kind, text) {
  const slot = document.getElementById("notice");
  if (slot) slot.replaceChildren(banner(kind, text));
}

/* The notice slot of a page being drawn, holding the pending notice if there is one. */
function noticeSlot() {
  const slot = h("div", { id: "notice" });
  if (pending) slot.append(banner(pending[0], pending[1]));
  pending = null;
  return slot;
}

function experimentRow(e) {
  const result = h("td", { class: "result", text: e.status === "draft" ? "not started" : "…" });
  const actions = h("td", { class: "actions" });
  const act = (label, action, cls) => h("button", {
    type: "button", class: cls || "", "data-action": action, text: label,
    onclick: async () => {
      if (action === "stop" && !confirm(`Stop ${e.key} for good? It cannot be started again.`)) return;
      const r = await api("POST", `/v1/experiments/${encodeURIComponent(e.key)}/${action}`);
      if (!r.ok) { notice("problem", `${label} ${e.key}: ${problemText(r)}`); return; }
      pending = ["ok", `${e.key} is ${r.data.status} (version ${r.data.version}).`];
      await viewExperiments();
    },
  });
  if (e.status === "draft") actions.append(act("Start", "start", "primary"));
  if (e.status === "paused") actions.append(act("Resume", "start", "primary"));
  if (e.status === "running") actions.append(act("Pause", "pause"));
  if (e.status === "running" || e.status === "paused") actions.append(act("Stop", "stop", "danger"));
  actions.append(h("a", { href: `#/edit/${encodeURIComponent(e.key)}`, text: "Edit" }));
  if (e.status !== "draft") actions.append(" ", h("a", { href: `/reports/${encodeURIComponent(e.key)}`, "data-report": e.key, text: "Report" }));
  const tr = h("tr", { "data-key": e.key },
    h("td", {}, h("strong", { text: e.key }), e.name ? h("div", { class: "note", text: e.name }) : null),
    h("td", { text: e.placement }),
    h("td", {}, h("span", { class: "status status-" + e.status, text: e.status }), h("div", { class: "note", text: "v" + e.version })),
    h("td", { text: e.policy.kind }),
    result,
    actions);
  async function loadResult() {
    if (e.status === "draft" || session === null) return;
    const r = await api("GET", `/v1/experiments/${encodeURIComponent(e.key)}/report`);
    if (!r.ok) { result.textContent = "report unavailable: " + problemText(r); return; }
    const v = r.data.verdict;
    result.replaceChildren(h("span", { class: "verdict-" + v.status, "data-verdict": v.status, text: v.headline }));
  }
  return { tr, loadResult };
}

function viewReportOnly() {
  const input = h("input", { type: "text", name: "experiment", autocomplete: "off" });
  const form = h("form", { class: "card", novalidate: true },
    field("Experiment key", "$.experiment", input),
    h("button", { type: "submit", class: "primary", text: "Open report" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) location.href = "/reports/" + encodeURIComponent(input.value.trim());
  });
  render(h("h1", { text: "Reports" }),
    h("p", { class: "note", text: "This key has the report scope: it opens reports. Listing and changing experiments needs an admin key." }),
    form);
}

/* ---------- Experiment form ---------- */

function jsonText(value) { return value === undefined || value === null ? "" : JSON.stringify(value, null, 2); }

function variantRow(container, variant, onChange) {
  const box = h("div", { class: "variant" });
  const key = h("input", { type: "text", value: variant.key || "", "data-role": "variant-key", oninput: onChange });
  const weight = h("input", { type: "text", inputmode: "decimal", value: variant.weight === undefined ? "" : String(variant.weight), "data-role": "variant-weight" });
  const payload = h("textarea", { rows: 3, "data-role": "variant-payload" });
  payload.value = variant.payload && Object.keys(variant.payload).length ? jsonText(variant.payload) : "";
  const features = h("textarea", { rows: 2, "data-role": "variant-features" });
  features.value = variant.features && Object.keys(variant.features).length ? jsonText(variant.features) : "";
  const remove = h("button", { type: "button", class: "danger", text: "Remove", onclick: () => { box.remove(); renumber(container); onChange(); } });
  box.append(
    h("div", { class: "row" },
      field("Variant key", "", key),
      field("Weight", "", weight, "share of the split (default 1)"),
      h("div", { class: "field" }, h("span", { class: "label", text: "\u00a0" }), remove)),
    h("div", { class: "row" },
      field("Payload (JSON object)", "", payload, "what the placement shows, e.g. {\"headline\": \"Free shipping\"}"),
      field("Features (JSON object, optional)", "", features, "describe the variant for contextual policies")),
    h("span", { class: "error", "data-error-for": "", role: "alert" }));
  container.append(box);
  renumber(container);
}

function renumber(container) {
  [...container.querySelectorAll(".variant")].forEach((box, i) => {
    const base = `$.variants[${i}]`;
    const set = (role, sub) => {
      const control = box.querySelector(`[data-role=${role}]`);
      const path = base + sub;
      control.setAttribute("data-path", path);
      control.id = "f-" + path.replace(/[^A-Za-z0-9]+/g, "-");
      control.closest("label").setAttribute("for", control.id);
      control.closest("label").querySelector(".error").setAttribute("data-error-for", path);
    };
    set("variant-key", ".key");
    set("variant-weight", ".weight");
    set("variant-payload", ".payload");
    set("variant-features", ".features");
    box.setAttribute("data-path", base);
    box.querySelector(":scope > .error").setAttribute("data-error-for", base);
  });
}

function policyFields(container, kind, values) {
  container.replaceChildren();
  const row = h("div", { class: "row" });
  for (const [name, type, hint] of POLICIES[kind] || []) {
    let control;
    const value = values[name];
    if (Array.isArray(type)) {
      control = h("select", { "data-type": "choice" }, h("option", { value: "", text: "(default)" }),
        type.map((t) => h("option", { value: t, text: t })));
      control.value = value === undefined ? "" : value;
    } else {
      let shown = value === undefined || value === null ? "" : String(value);
      if (type === "list" && Array.isArray(value)) shown = value.join(", ");
      if (type === "args" && Array.isArray(value)) shown = value.join(" ");
      control = h("input", { type: "text", value: shown, "data-type": type, inputmode: type === "number" || type === "int" ? "decimal" : null });
    }
    control.setAttribute("data-setting", name);
    row.append(field(name, "$.policy." + name, control, hint));
  }
  if (!(POLICIES[kind] || []).length) row.append(h("p", { class: "note", text: "A fixed split over the variants' weights: nothing to set." }));
  container.append(row);
}

function experimentForm(existing) {
  const editing = existing !== null;
  const e = existing || { variants: [{ key: "control" }, { key: "treatment" }], policy: { kind: "fixed" } };
  const input = (name, value, attrs) => h("input", { type: "text", name, value: value === undefined || value === null ? "" : String(value), ...(attrs || {}) });
  const key = input("key", e.key, { readonly: editing });
  const name = input("name", e.name);
  const hypothesis = h("textarea", { name: "hypothesis", rows: 2 });
  hypothesis.value = e.hypothesis || "";
  const placement = input("placement", e.placement);
  const variants = h("div", { id: "variants" });
  const defaultVariant = h("select", { name: "default_variant" });
  const refreshDefault = () => {
    const keys = [...variants.querySelectorAll("[data-role=variant-key]")].map((x) => x.value.trim()).filter(Boolean);
    const current = defaultVariant.value || e.default_variant || keys[0] || "";
    defaultVariant.replaceChildren(...keys.map((k) => h("option", { value: k, text: k })));
    if (current && !keys.includes(current)) defaultVariant.append(h("option", { value: current, text: current }));
    defaultVariant.value = current;
  };
  for (const v of e.variants || []) variantRow(variants, v, refreshDefault);
  const addVariant = h("button", { type: "button", id: "add-variant", text: "+ Add variant", onclick: () => { variantRow(variants, {}, refreshDefault); refreshDefault(); } });
  const policyKind = h("select", { name: "policy" }, Object.keys(POLICIES).map((k) => h("option", { value: k, text: k })));
  policyKind.value = (e.policy && e.policy.kind) || "fixed";
  const policySettings = h("div", { id: "policy-settings" });
  const policyValues = { ...(e.policy || {}) };
  policyFields(policySettings, policyKind.value, policyValues);
  policyKind.addEventListener("change", () => policyFields(policySettings, policyKind.value, policyKind.value === (e.policy || {}).kind ? policyValues : {}));
  const targeting = h("textarea", { name: "targeting", rows: 3 });
  targeting.value = jsonText(e.targeting);
  const holdout = input("holdout", e.holdout, { inputmode: "decimal" });
  const traffic = input("traffic", e.traffic, { inputmode: "decimal" });
  const layer = input("layer", e.layer);
  const priority = input("priority", e.priority, { inputmode: "numeric" });
  const rewardWindow = input("reward_window_s", e.reward_window_s, { inputmode: "numeric" });
  const primary = input("primary_metric", e.primary_metric);
  const guardrails = input("guardrail_metrics", (e.guardrail_metrics || []).join(", "));
  const extra = h("textarea", { name: "extra", rows: 4 });
  extra.value = extrasOf(e);

  const form = h("form", { class: "card", id: "experiment-form", novalidate: true },
    h("span", { class: "error", "data-error-for": "$", role: "alert" }),
    h("fieldset", {}, h("legend", { text: "Experiment" }),
      h("div", { class: "row" },
        field("Key", "$.key", key, editing ? "the key cannot change" : "letters, digits, _ . : -"),
        field("Placement", "$.placement", placement, "where it is shown, e.g. home-hero"),
        field("Name", "$.name", name)),
      field("Hypothesis", "$.hypothesis", hypothesis)),
    h("fieldset", { "data-path": "$.variants" }, h("legend", { text: "Variants" }),
      h("span", { class: "error", "data-error-for": "$.variants", role: "alert" }),
      variants, h("p", {}, addVariant),
      field("Default variant", "$.default_variant", defaultVariant, "served to the holdout, when paused and under the kill switch")),
    h("fieldset", {}, h("legend", { text: "Policy" }),
      field("Policy", "$.policy", policyKind, "fixed: A/B/n split; the others learn from outcomes"),
      policySettings),
    h("fieldset", {}, h("legend", { text: "Audience" }),
      field("Targeting (JSON, optional)", "$.targeting", targeting, 'e.g. {"attribute": "country", "op": "in", "value": ["DE", "AT"]}'),
      h("div", { class: "row" },
        field("Holdout", "$.holdout", holdout, "share kept on the default, 0 to 0.9"),
        field("Traffic", "$.traffic", traffic, "share of the layer, (0, 1]"),
        field("Layer", "$.layer", layer, "mutually exclusive experiments share a layer"),
        field("Priority", "$.priority", priority, "higher wins on a shared placement"))),
    h("fieldset", {}, h("legend", { text: "Metrics" }),
      h("div", { class: "row" },
        field("Primary metric", "$.primary_metric", primary, "outcome type, default conversion"),
        field("Guardrail metrics", "$.guardrail_metrics", guardrails, "comma-separated outcome types"),
        field("Reward window (s)", "$.reward_window_s", rewardWindow, "how long outcomes count, default 3600"))),
    h("fieldset", {}, h("legend", { text: "More settings" }),
      field("Other definition fields (JSON object, optional)", "$.extra", extra, "reward, frequency_cap, salt, kind, send_time — see docs/experiments.md")),
    h("p", {},
      h("button", { type: "submit", class: "primary", id: "save", text: editing ? "Save new version" : "Create experiment" }),
      " ", h("a", { href: "#/experiments", text: "Cancel" })));
  refreshDefault();
  if (e.default_variant) defaultVariant.value = e.default_variant;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const spec = readSpec(form, {
      key, name, hypothesis, placement, variants, defaultVariant, policyKind, policySettings,
      targeting, holdout, traffic, layer, priority, rewardWindow, primary, guardrails, extra,
    });
    if (spec === null) { form.querySelector(".invalid")?.focus(); return; }
    const r = editing
      ? await api("PUT", `/v1/experiments/${encodeURIComponent(e.key)}`, spec)
      : await api("POST", "/v1/experiments", spec);
    if (!r.ok) { showProblem(form, r); return; }
    pending = ["ok", `Saved ${r.data.key} (version ${r.data.version}, ${r.data.status}).`];
    if (location.hash === "#/experiments") route();
    else location.hash = "#/experiments";
  });
  return form;
}

function extrasOf(e) {
  const out = {};
  if (e.kind && e.kind !== "content") out.kind = e.kind;
  if (e.send_time) out.send_time = e.send_time;
  if (e.salt !== undefined && e.salt !== null) out.salt = e.salt;
  if (e.reward && JSON.stringify(e.reward) !== JSON.stringify(DEFAULT_REWARD)) out.reward = e.reward;
  if (e.frequency_cap) out.frequency_cap = e.frequency_cap;
  return Object.keys(out).length ? jsonText(out) : "";
}

/* Read the form into an ExperimentSpec; null (with errors shown) when a field cannot be read. */
function readSpec(form, c) {
  let ok = true;
  const fail = (path, message) => { showError(form, path, message); ok = false; return undefined; };
  const text = (el) => el.value.trim();
  const num = (el, path, int) => {
    const t = text(el);
    if (t === "") return undefined;
    const n = Number(t);
    if (!Number.isFinite(n) || (int && !Number.isInteger(n))) return fail(path, int ? "Enter a whole number." : "Enter a number.");
    return n;
  };
  const json = (el, path, objectOnly) => {
    const t = text(el);
    if (t === "") return undefined;
    try {
      const v = JSON.parse(t);
      if (objectOnly && (v === null || typeof v !== "object" || Array.isArray(v))) return fail(path, "Enter a JSON object: { ... }.");
      return v;
    } catch (err) {
      return fail(path, "Not valid JSON: " + err.message);
    }
  };
  const spec = { key: text(c.key), placement: text(c.placement) };
  if (text(c.name)) spec.name = text(c.name);
  if (text(c.hypothesis)) spec.hypothesis = c.hypothesis.value;
  spec.variants = [...c.variants.querySelectorAll(".variant")].map((box, i) => {
    const base = `$.variants[${i}]`;
    const v = { key: text(box.querySelector("[data-role=variant-key]")) };
    const w = num(box.querySelector("[data-role=variant-weight]"), base + ".weight", false);
    if (w !== undefined) v.weight = w;
    // Payload and features go to the API as typed (any JSON): the API names what is wrong.
    const p = json(box.querySelector("[data-role=variant-payload]"), base + ".payload", false);
    if (p !== undefined) v.payload = p;
    const f = json(box.querySelector("[data-role=variant-features]"), base + ".features", false);
    if (f !== undefined) v.features = f;
    return v;
  });
  spec.default_variant = c.defaultVariant.value;
  const policy = { kind: c.policyKind.value };
  for (const el of c.policySettings.querySelectorAll("[data-setting]")) {
    const name = el.getAttribute("data-setting");
    const type = el.getAttribute("data-type");
    const t = text(el);
    if (t === "") continue;
    const path = "$.policy." + name;
    if (type === "number" || type === "int") { const n = num(el, path, type === "int"); if (n !== undefined) policy[name] = n; }
    else if (type === "list") policy[name] = t.split(",").map((s) => s.trim()).filter(Boolean);
    else if (type === "args") policy[name] = t.split(/\s+/).filter(Boolean);
    else policy[name] = t;
  }
  spec.policy = policy;
  const targeting = json(c.targeting, "$.targeting", false);
  if (targeting !== undefined) spec.targeting = targeting;
  for (const [name, el, int] of [["holdout", c.holdout, false], ["traffic", c.traffic, false], ["priority", c.priority, true], ["reward_window_s", c.rewardWindow, true]]) {
    const n = num(el, "$." + name, int);
    if (n !== undefined) spec[name] = n;
  }
  if (text(c.layer)) spec.layer = text(c.layer);
  if (text(c.primary)) spec.primary_metric = text(c.primary);
  spec.guardrail_metrics = text(c.guardrails) ? text(c.guardrails).split(",").map((s) => s.trim()).filter(Boolean) : [];
  const extra = json(c.extra, "$.extra", true);
  if (extra !== undefined) {
    for (const [k, v] of Object.entries(extra)) {
      if (!EXTRA_KEYS.includes(k)) fail("$.extra", `${k} is set in its own field above (or is not a definition field); here: ${EXTRA_KEYS.join(", ")}.`);
      else spec[k] = v;
    }
  }
  return ok ? spec : null;
}

async function viewNew() {
  if (!isAdmin()) { viewReportOnly(); return; }
  render(h("h1", { text: "New experiment" }), experimentForm(null));
}

async function viewEdit(key) {
  if (!isAdmin()) { viewReportOnly(); return; }
  const r = await api("GET", `/v1/experiments/${encodeURIComponent(key)}`);
  if (!r.ok) { render(h("h1", { text: "Edit " + key }), banner("problem", problemText(r))); return; }
  const e = r.data;
  render(h("h1", { text: `Edit ${e.key}` }),
    h("p", { class: "note", text: `Version ${e.version}, ${e.status}. Saving stores version ${e.version + 1}.` }),
    experimentForm(e));
}

/* ---------- API keys ---------- */

async function viewKeys() {
  if (!isAdmin()) { viewReportOnly(); return; }
  const r = await api("GET", "/v1/keys");
  if (session === null) return;
  if (!r.ok) { render(h("h1", { text: "API keys" }), banner("problem", problemText(r))); return; }
  const rows = r.data.keys.map((k) => h("tr", { "data-key-id": k.key_id },
    h("td", { text: k.key_id }), h("td", { text: k.name || "" }), h("td", { text: k.scopes.join(", ") }),
    h("td", { text: k.source }),
    h("td", { text: k.created_at ? new Date(k.created_at * 1000).toISOString().slice(0, 16).replace("T", " ") : "" }),
    h("td", { class: "actions" }, k.source === "env"
      ? h("span", { class: "note", text: "configured in TAILOR_AUTH_API_KEYS" })
      : h("button", { type: "button", class: "danger", text: "Revoke", onclick: async () => {
          if (!confirm(`Revoke ${k.key_id}? Clients using it are refused at once.`)) return;
          const d = await api("DELETE", `/v1/keys/${encodeURIComponent(k.key_id)}`);
          if (!d.ok) { notice("problem", problemText(d)); return; }
          pending = ["ok", `Revoked ${k.key_id}.`];
          await viewKeys();
        } }))));
  render(h("h1", { text: "API keys" }), noticeSlot(),
    h("table", { id: "keys" }, h("thead", {}, h("tr", {}, ["Id", "Name", "Scopes", "Source", "Created (UTC)", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows)),
    keyForm());
}

function keyForm() {
  const name = h("input", { type: "text", name: "name" });
  const checks = h("div", { class: "checks", "data-path": "$.scopes", tabindex: "-1" },
    SCOPES.map((s) => h("label", {}, h("input", { type: "checkbox", value: s, name: "scope" }), s)));
  const rate = h("input", { type: "text", name: "rate_per_s", inputmode: "decimal" });
  const burst = h("input", { type: "text", name: "burst", inputmode: "numeric" });
  const form = h("form", { class: "card", id: "key-form", novalidate: true },
    h("h2", { text: "Create a key" }),
    h("span", { class: "error", "data-error-for": "$", role: "alert" }),
    h("div", { class: "row" },
      field("Name", "$.name", name, "who or what uses it"),
      h("div", { class: "field" }, h("span", { class: "label", text: "Scopes" }), checks,
        h("span", { class: "hint", text: "decide: safe in a web page · ingest: server-side events · report: reports · admin: everything" }),
        h("span", { class: "error", "data-error-for": "$.scopes", role: "alert" })),
      field("Rate (requests/s)", "$.rate_per_s", rate, "optional own limit"),
      field("Burst", "$.burst", burst, "optional")),
    h("p", {}, h("button", { type: "submit", class: "primary", text: "Create key" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { scopes: [...checks.querySelectorAll("input:checked")].map((x) => x.value) };
    if (name.value.trim()) body.name = name.value.trim();
    for (const [k, el] of [["rate_per_s", rate], ["burst", burst]]) {
      if (el.value.trim() === "") continue;
      const n = Number(el.value.trim());
      if (!Number.isFinite(n)) { showError(form, "$." + k, "Enter a number."); return; }
      body[k] = n;
    }
    const r = await api("POST", "/v1/keys", body);
    if (!r.ok) { showProblem(form, r); return; }
    await viewKeys();
    const slot = document.getElementById("notice");
    slot.replaceChildren(h("div", { class: "banner ok" },
      h("div", {}, h("p", { text: `Created ${r.data.key_id} (${r.data.scopes.join(", ")}). Copy the secret now: it is not shown again.` }),
        h("div", { class: "secret", id: "new-secret", text: r.data.secret }))));
  });
  return form;
}

/* ---------- Routing ---------- */

function route() {
  if (session === null) return;
  const hash = location.hash || "#/experiments";
  const [, page, arg] = hash.match(/^#\/([^/]*)\/?(.*)$/) || [];
  for (const a of document.querySelectorAll("nav a[data-nav]")) a.classList.toggle("current", a.getAttribute("data-nav") === page);
  if (page === "new") viewNew();
  else if (page === "edit" && arg) viewEdit(decodeURIComponent(arg));
  else if (page === "keys") viewKeys();
  else viewExperiments();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  const stored = sessionStorage.getItem(KEY_ITEM);
  const result = await startSession(stored);
  if (result.ok) { enter(result.data); return; }
  sessionStorage.removeItem(KEY_ITEM);
  showLogin(stored ? problemText(result) : "");
}

document.addEventListener("DOMContentLoaded", boot);
