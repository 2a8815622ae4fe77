"use strict";
const JOB = document.body.dataset.job;
const FINISHED = ["succeeded", "partially_succeeded", "failed", "cancelled"];
// A report link carries a read-only token for this job (#token=...); a tenant's key also works (#key=...).
// Fragments never reach a server; both leave the address bar at once and live in this tab only.
const frag = new URLSearchParams(location.hash.slice(1));
let token = frag.get("token") || sessionStorage.getItem(`fakescope-token-${JOB}`);
let key = token ? null : (frag.get("key") || sessionStorage.getItem("fakescope-key"));
if (location.hash) history.replaceState(null, "", location.pathname);
if (!token && !key) key = prompt("API key of the job's tenant");
if (token) sessionStorage.setItem(`fakescope-token-${JOB}`, token);
if (key) sessionStorage.setItem("fakescope-key", key);
let filter = "all";
let items = [];
let lastSeen = null;
let pollMs = 2000;
const $ = (s) => document.querySelector(s);

const labels = {};  // position -> the label this reviewer gave in this tab
const auth = () => (token ? {"X-Report-Token": token} : {"X-API-Key": key || ""});
async function api(path) {
  const r = await fetch(path, {headers: auth()});
  if (!r.ok) throw new Error(r.status === 404 ? "Job not found for this API key" : `HTTP ${r.status}`);
  return r.json();
}
async function pages(path) {
  let out = [], offset = 0;
  for (;;) {
    const p = await api(`${path}?offset=${offset}&limit=1000`);
    out = out.concat(p.data); offset += p.data.length;
    if (!p.data.length || offset >= p.count) return out;
  }
}
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
// What the file declares about its origin (the same words as fakescope.report.provenance_line).
function provenanceLine(p) {
  if (!p) return null;
  if (p.tampered) return "C2PA manifest present but it fails validation: the file was changed after signing";
  const c2pa = p.c2pa || {};
  const what = p.generator || p.digital_source_type;
  if (p.declares_ai) {
    const signer = c2pa.valid && c2pa.signer ? `, signed by ${c2pa.signer}` : "";
    return `declares it was generated${what ? ` (${what})` : ""}: ${(p.sources || []).join(", ")}${signer}`;
  }
  if (c2pa.present) return `C2PA manifest, valid, signed by ${c2pa.signer || "an unknown signer"}; declares no generation`;
  return what ? `metadata names ${what}` : null;
}
// A reviewer marks a verdict real or fake (feedback: an appeal, or a correction to train on).
function markButtons(it) {
  const box = el("div", {class: "mark"});
  const said = el("span", {class: "marked"}, labels[it.position] ? `marked ${labels[it.position]}` : "");
  for (const label of ["real", "fake"]) {
    const b = el("button", {"data-mark": label}, `mark ${label}`);
    b.addEventListener("click", async () => {
      const r = await fetch(`/v1/jobs/${JOB}/items/${it.position}/feedback`, {
        method: "POST", headers: {...auth(), "Content-Type": "application/json"}, body: JSON.stringify({label}),
      });
      if (!r.ok) { said.textContent = `not saved (HTTP ${r.status})`; return; }
      labels[it.position] = label;
      said.textContent = `marked ${label}`;
    });
    box.append(b);
  }
  box.append(said);
  return box;
}
function render() {
  const grid = $("#grid");
  grid.replaceChildren();
  for (const it of items) {
    const kind = it.error ? "error" : it.prediction;
    if (filter === "fake" && kind !== "fake") continue;
    if (filter === "uncertain" && kind !== "uncertain") continue;
    if (filter === "error" && kind !== "error") continue;
    const card = el("div", {class: `card ${kind}`, "data-kind": kind});
    card.append(el("div", {class: "name"}, it.name));
    if (it.error) {
      card.append(el("div", {class: "verdict"}, "error"), el("div", {}, it.error));
    } else {
      const imgs = el("div", {class: "imgs"});
      if (it.image_url) imgs.append(el("img", {src: it.image_url, alt: "image", loading: "lazy"}));
      if (it.overlay_url) imgs.append(el("img", {src: it.overlay_url, alt: "GradCAM overlay", class: "overlay", loading: "lazy"}));
      // An out-of-domain verdict is shown as such: its probability was never measured on images like it.
      const verdict = it.in_domain === false
        ? `${it.prediction}? · out of domain (score ${it.domain_score.toFixed(1)}): unreliable`
        : `${it.prediction} · p(fake) = ${it.fake_probability.toFixed(3)}`;
      if (it.in_domain === false) card.classList.add("ood");
      card.append(imgs, el("div", {class: "verdict"}, verdict), markButtons(it));
      const prov = provenanceLine(it.provenance);
      if (prov) card.append(el("div", {class: "prov"}, prov));
      if (it.explanation && Object.keys(it.explanation).length) {
        const ul = el("ul", {class: "artifacts"});
        for (const [name, reason] of Object.entries(it.explanation)) ul.append(el("li", {}, el("b", {}, name), ": ", reason));
        card.append(ul);
      } else if (it.explain_status === "pending") card.append(el("div", {}, "explanation pending"));
    }
    grid.append(card);
  }
}
async function refresh() {
  try {
    const job = await api(`/v1/jobs/${JOB}`);
    const c = job.counts;
    $("#state").textContent = job.state;
    $("#progress").max = c.total || 1;
    $("#progress").value = c.done + c.failed + c.cancelled;
    $("#counts").textContent = `${c.done} done (${c.fake} fake, ${c.real} real, ${c.uncertain} uncertain, ` +
      `${c.out_of_domain} out of domain), ${c.failed} failed, ${c.queued} queued, ${c.explain_pending} explanations pending`;
    // The pages are fetched again only when the counts say something changed: a large job's report
    // left open must not re-read every page every few seconds. Quiet polls back off to 10 s.
    const seen = `${c.done}/${c.failed}/${c.cancelled}/${c.explain_pending}/${job.state}`;
    if (seen !== lastSeen) {
      const [results, failures] = await Promise.all([pages(`/v1/jobs/${JOB}/results`), pages(`/v1/jobs/${JOB}/failures`)]);
      items = results.concat(failures).sort((a, b) => a.position - b.position);
      render();
      lastSeen = seen;
      pollMs = 2000;
    } else {
      pollMs = Math.min(10000, pollMs * 1.5);
    }
    document.body.dataset.state = job.state;
    if (!FINISHED.includes(job.state) || c.explain_pending) setTimeout(refresh, pollMs);
    else document.body.dataset.loaded = "true";
  } catch (e) {
    $("#msg").textContent = e.message;
    document.body.dataset.error = e.message;
  }
}
document.querySelectorAll("[data-filter]").forEach((b) => b.addEventListener("click", () => {
  filter = b.dataset.filter;
  document.querySelectorAll("[data-filter]").forEach((x) => x.classList.toggle("on", x === b));
  render();
}));
document.querySelectorAll("[data-file]").forEach((b) => b.addEventListener("click", async () => {
  const f = b.dataset.file;
  const data = f === "results" ? items : await api(`/v1/jobs/${JOB}/${f}`);
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], {type: "application/json"}));
  const a = el("a", {href: url, download: f === "results" ? `${JOB}-results.json` : f});
  document.body.append(a); a.click(); a.remove();
}));
refresh();
