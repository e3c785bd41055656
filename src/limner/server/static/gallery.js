"use strict";
// The gallery: talks to the same server's JSON API; renders text with textContent only.
const $ = (id) => document.getElementById(id);
let current = null;
let inputAsset = null;

function headers(extra) {
  const key = localStorage.getItem("limner-key") || "";
  return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {});
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.error?.message || response.statusText);
  return body;
}

async function loadModels() {
  const models = await api("/v1/models");
  for (const m of models.data) {
    const canGenerate = (m.limner?.operations || []).includes("generate");
    const filter = document.createElement("option");
    filter.value = filter.textContent = m.id;
    $("model-filter").append(filter);
    if (canGenerate) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = m.id;
      $("model").append(opt);
    }
  }
}

async function loadGrid() {
  const params = new URLSearchParams();
  if ($("q").value) params.set("q", $("q").value);
  if ($("model-filter").value) params.set("model", $("model-filter").value);
  if ($("since").value) params.set("since", String(Date.parse($("since").value) / 1000));
  const items = await api("/v1/gallery/items?" + params);
  const grid = $("grid");
  grid.replaceChildren();
  for (const item of items.data) {
    for (const image of item.images) {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.id = item.id;
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = item.prompt;
      const caption = document.createElement("p");
      const cost = item.cost_usd == null ? "" : " · $" + item.cost_usd.toFixed(3);
      caption.textContent = item.prompt + " — " + item.model + cost;
      card.append(img, caption);
      card.addEventListener("click", () => openViewer(item, image));
      grid.append(card);
    }
  }
}

function openViewer(item, image) {
  current = { item, image };
  $("viewer-img").src = image.url;
  $("download").href = image.url;
  const table = $("viewer-params");
  table.replaceChildren();
  const rows = Object.assign({
    prompt: item.prompt, negative_prompt: item.negative_prompt, model: item.model,
    operation: item.operation,
    created: new Date(item.created_at * 1000).toLocaleString(), cost_usd: item.cost_usd,
    tags: item.tags.join(", "), seed: image.seed, size: image.width + "x" + image.height,
  }, item.params);
  for (const [name, value] of Object.entries(rows)) {
    if (value == null || value === "") continue;
    const tr = document.createElement("tr");
    const k = document.createElement("td");
    const v = document.createElement("td");
    k.textContent = name;
    v.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    tr.append(k, v);
    table.append(tr);
  }
  $("viewer").showModal();
}

async function submitJob(spec) {
  $("gen-status").textContent = "Queued…";
  $("gen-progress").hidden = false;
  $("gen-progress").removeAttribute("value");
  const job = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(spec) });
  await follow(job.id);
}

async function follow(jobId) {
  // Server-sent events read through fetch, so the API key can travel in a header.
  const response = await fetch("/v1/jobs/" + jobId + "/events", { headers: headers() });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = chunk.split("\n").find((l) => l.startsWith("data:"));
      if (!chunk.startsWith("event: job") || !data) continue;
      last = JSON.parse(data.slice(5));
      $("gen-status").textContent = last.status + (last.progress_message ? " — " + last.progress_message : "");
      if (last.progress != null) $("gen-progress").value = last.progress;
    }
  }
  $("gen-progress").hidden = true;
  if (last && last.status === "failed") $("gen-status").textContent = "Failed: " + last.error.message;
  await loadGrid();
}

function formSpec() {
  const spec = { prompt: $("prompt").value, model: $("model").value || null, n: Number($("n").value || 1) };
  if ($("size").value) spec.size = $("size").value;
  if ($("seed").value) spec.seed = Number($("seed").value);
  if (inputAsset) { spec.operation = "edit"; spec.images = ["asset:" + inputAsset]; }
  return spec;
}

function wire() {
  $("api-key").value = localStorage.getItem("limner-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("limner-key", $("api-key").value); init(); });
  $("search").addEventListener("submit", (e) => { e.preventDefault(); loadGrid().catch(showError); });
  $("gen-form").addEventListener("submit", (e) => { e.preventDefault(); submitJob(formSpec()).catch(showError); });
  $("close").addEventListener("click", () => $("viewer").close());
  $("rerun").addEventListener("click", () => {
    const { item } = current;
    const spec = { prompt: item.prompt, model: item.model, tags: item.tags };
    for (const name of ["size", "quality", "style", "seed", "steps", "guidance", "aspect_ratio", "negative_prompt"]) {
      const value = name === "negative_prompt" ? item.negative_prompt : item.params[name];
      if (value != null) spec[name] = value;
    }
    $("viewer").close();
    submitJob(spec).catch(showError);
  });
  $("use-input").addEventListener("click", () => {
    inputAsset = current.image.sha256;
    $("input-thumb").src = current.image.url;
    $("input-image").hidden = false;
    $("viewer").close();
    $("prompt").focus();
  });
  $("clear-input").addEventListener("click", () => { inputAsset = null; $("input-image").hidden = true; });
  $("delete").addEventListener("click", async () => {
    await api("/v1/gallery/items/" + current.item.id, { method: "DELETE" }).catch(showError);
    $("viewer").close();
    await loadGrid();
  });
}

function showError(err) { $("gen-status").textContent = "Error: " + err.message; $("gen-progress").hidden = true; }

async function init() {
  try { await loadModels(); await loadGrid(); } catch (err) { showError(err); }
}

wire();
init();
