"use strict";
// The page of `imageflows serve`: each control calls the JSON API and shows the PNG it returns.

const $ = (id) => document.getElementById(id);
let info = null;
let seed = 0;
let pending = 0;
const latest = {};  // per kind of request, the newest one: older answers are dropped

class Stale extends Error {}

function newSeed() {
  return Math.floor(Math.random() * 2147483647);
}

async function call(url, options, kind) {
  const ticket = (latest[kind] = (latest[kind] || 0) + 1);
  pending += 1;
  document.body.classList.add("busy");
  try {
    const response = await fetch(url, options);
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    $("status").textContent = "";
    if (kind !== undefined && ticket !== latest[kind]) {
      throw new Stale();
    }
    return body;
  } catch (error) {
    if (!(error instanceof Stale)) $("status").textContent = error.message;
    throw error;
  } finally {
    pending -= 1;
    if (pending === 0) document.body.classList.remove("busy");
  }
}

async function sample() {
  const params = new URLSearchParams({
    temperature: $("temperature").value, n: $("count").value, seed: String(seed),
  });
  if (info.num_classes > 0) params.set("class", $("class").value);
  const body = await call(`/api/sample?${params}`, undefined, "sample");
  $("samples").src = body.image;
  $("samples").dataset.seed = String(body.seed);
  $("samples").dataset.temperature = String(body.temperature);
}

async function thumbnail(input, img) {
  const body = await call(`/api/image?index=${encodeURIComponent(input.value)}`);
  img.src = body.image;
  img.title = `#${body.index}: ${body.label}`;
}

async function interpolate() {
  const params = new URLSearchParams({
    a: $("image-a").value, b: $("image-b").value, steps: $("steps").value,
    spherical: $("spherical").checked ? "1" : "0",
  });
  const body = await call(`/api/interpolate?${params}`, undefined, "interpolate");
  $("frames").src = body.image;
}

async function edit() {
  const alphas = {};
  for (const slider of document.querySelectorAll("#sliders input")) {
    const alpha = Number(slider.value);
    if (alpha !== 0) alphas[slider.dataset.attribute] = alpha;
  }
  const body = await call("/api/edit", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image: Number($("edit-image").value), alphas }),
  }, "edit");
  $("edit-input").src = body.input;
  $("edited").src = body.image;
}

function addSliders(attributes, maxAlpha) {
  const limit = Math.min(3, maxAlpha);
  for (const attribute of attributes) {
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = attribute.name;
    name.title = `${attribute.name}: ${attribute.n_positive} with, ${attribute.n_negative} without`;
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", min: -limit, max: limit, step: 0.25, value: 0 });
    slider.dataset.attribute = attribute.name;
    const value = document.createElement("output");
    value.textContent = "0";
    slider.addEventListener("input", () => { value.textContent = slider.value; });
    slider.addEventListener("change", () => edit().catch(() => {}));
    label.append(name, slider, value);
    $("sliders").append(label);
  }
}

function quietly(action) {
  return () => action().catch(() => {});  // errors are shown in #status
}

async function start() {
  info = await call("/api/info");
  const weights = info.step === null ? "" : ` at step ${info.step}`;
  $("run-info").textContent = `${info.run} (${info.model}${weights}, ` +
    `${info.image_shape.join("×")}, ${info.num_levels} levels) · ${info.data}, ` +
    `${info.split} split, ${info.num_images} images`;
  const last = String(info.num_images - 1);
  for (const id of ["image-a", "image-b", "edit-image"]) $(id).max = last;
  $("count").max = String(info.caps.samples);
  $("steps").max = String(info.caps.steps);
  addSliders(info.attributes, info.caps.alpha);
  if (info.num_classes > 0) {  // a class-conditional run: sample p(x | class)
    for (let c = 0; c < info.num_classes; c += 1) {
      $("class").append(new Option(`class ${c}`, String(c)));
    }
    $("class-picker").hidden = false;
    $("class").addEventListener("change", quietly(sample));
  }

  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  });
  $("temperature").addEventListener("change", quietly(sample));
  $("sample").addEventListener("click", () => { seed = newSeed(); sample().catch(() => {}); });
  $("steps").addEventListener("input", () => { $("steps-value").textContent = $("steps").value; });
  $("image-a").addEventListener("change", () => thumbnail($("image-a"), $("thumb-a")).catch(() => {}));
  $("image-b").addEventListener("change", () => thumbnail($("image-b"), $("thumb-b")).catch(() => {}));
  $("interpolate").addEventListener("click", quietly(interpolate));
  $("edit-image").addEventListener("change", quietly(edit));
  $("reset").addEventListener("click", () => {
    for (const slider of document.querySelectorAll("#sliders input")) {
      slider.value = "0";
      slider.nextElementSibling.textContent = "0";
    }
    edit().catch(() => {});
  });

  seed = newSeed();
  await Promise.all([
    sample(), thumbnail($("image-a"), $("thumb-a")), thumbnail($("image-b"), $("thumb-b")),
    interpolate(), edit(),
  ]);
  document.body.dataset.ready = "1";
}

start().catch(() => {});
