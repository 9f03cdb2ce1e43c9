// The kdetect page: upload an image, draw the detections, filter them by score in the browser.
"use strict";

const state = { model: null, image: null, objects: [] };
const $ = (id) => document.getElementById(id);

function color(labelId) {
  const colors = (state.model && state.model.colors) || [];
  const c = colors.length ? colors[labelId % colors.length] : [255, 0, 0];
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function textColor(labelId) {
  const colors = (state.model && state.model.colors) || [];
  const c = colors.length ? colors[labelId % colors.length] : [255, 0, 0];
  return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150 ? "#000" : "#fff";
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function threshold() {
  return parseFloat($("threshold").value);
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const img = state.image;
  if (!img) return;
  // A small image is enlarged by a whole factor (pixels kept sharp) until its shorter side is
  // at least 320, as kdetect predict's drawn images are, so that its labels stay readable.
  const scale = Math.max(1, Math.ceil(320 / Math.max(1, Math.min(img.naturalWidth, img.naturalHeight))));
  canvas.width = img.naturalWidth * scale;
  canvas.height = img.naturalHeight * scale;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const shown = state.objects.filter((o) => o.score >= threshold());
  const line = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 200));
  const fontSize = Math.max(11, Math.round(Math.min(canvas.width, canvas.height) / 40));
  ctx.font = `${fontSize}px sans-serif`;
  ctx.textBaseline = "top";
  // Lowest scores first so that the most confident boxes end up on top.
  for (const o of [...shown].reverse()) {
    const [x1, y1, x2, y2] = o.bbox.map((v) => v * scale);
    ctx.lineWidth = line;
    ctx.strokeStyle = color(o.label_id);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${o.label} ${o.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 4;
    const th = fontSize + 4;
    const ty = y1 - th >= 0 ? y1 - th : y1;
    ctx.fillStyle = color(o.label_id);
    ctx.fillRect(x1, ty, tw, th);
    ctx.fillStyle = textColor(o.label_id);
    ctx.fillText(text, x1 + 2, ty + 2);
  }
  canvas.dataset.drawn = String(shown.length);
  $("shown").textContent = shown.length;
  $("total").textContent = state.objects.length;
  const list = $("detections");
  list.replaceChildren(
    ...shown.map((o) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color(o.label_id);
      li.append(sw, `${o.label} ${o.score.toFixed(2)} [${o.bbox.map((v) => Math.round(v)).join(", ")}]`);
      return li;
    })
  );
}

async function loadModel() {
  try {
    const response = await fetch("/api/model");
    state.model = await response.json();
  } catch (err) {
    setStatus(`cannot reach the server: ${err}`, true);
    return;
  }
  $("model-name").textContent = state.model.name;
  if (typeof state.model.min_score === "number") {  // the run's best-F1 threshold
    $("threshold").value = state.model.min_score;
    $("threshold-value").textContent = state.model.min_score.toFixed(2);
  }
  $("classes").replaceChildren(
    ...state.model.classes.map((name, i) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color(i);
      li.append(sw, name);
      return li;
    })
  );
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this file"));
    img.src = URL.createObjectURL(file);
  });
}

async function predict(file) {
  state.objects = [];
  $("canvas").dataset.drawn = "0";
  setStatus(`detecting objects in ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  form.append("min_score", "0");  // everything; the slider filters here
  let body;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
    return;
  }
  try {
    state.image = await loadImage(file);
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
    return;
  }
  state.objects = body.objects;
  setStatus(`${file.name}: ${body.width}x${body.height}, ${body.objects.length} detections in ${body.time_ms} ms`);
  draw();
  document.body.dataset.ready = "1";
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) predict(e.target.files[0]);
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = threshold().toFixed(2);
    draw();
  });
  loadModel();
}

init();
