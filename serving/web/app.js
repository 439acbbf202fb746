// The clsloc web page: send one image to POST /predict, show label, score and box over the image.
"use strict";

const $ = (id) => document.getElementById(id);

// With CLSLOC_API_KEY set the service answers 401 until the page sends the key.
// It is kept for this tab only (sessionStorage), never in the page's URL.
const KEY_STORE = "clsloc-api-key";
function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}
function askForKey() { $("key-form").hidden = false; }

async function showModel() {
  try {
    const response = await fetch("/model", { headers: authHeaders() });
    const model = await response.json();
    if (response.status === 401) askForKey();
    $("model-line").textContent = response.ok
      ? `${model.name}:${model.version} — classes: ${model.classes.join(", ")}`
      : `model unavailable: ${model.detail || model.error}`;
    if (response.ok) showAbout(model);
  } catch (err) {
    $("model-line").textContent = `model unavailable: ${err}`;
  }
}

// What the model knows, how well it did on its validation images, and its samples to try.
function showAbout(model) {
  $("description").textContent = model.description || "";
  $("classes").textContent = model.classes.join(", ");
  const onnx = (model.metrics || {}).onnx;
  $("metrics").textContent = onnx && onnx.n
    ? ` — on its ${onnx.n} validation images: accuracy ${pct(onnx.accuracy)}, mean box IoU ${onnx.mean_iou.toFixed(2)}, `
      + `right class and box (IoU ≥ 0.5) ${pct(onnx.loc_accuracy)}`
    : "";
  const samples = $("samples");
  samples.replaceChildren();
  for (const sample of model.samples || []) samples.append(sampleButton(sample));
  $("samples-block").hidden = !(model.samples || []).length;
  $("about").hidden = false;
}
const pct = (x) => `${(x * 100).toFixed(1)}%`;

// A sample is fetched with the page's key (the service may require one), then scored like a dropped file.
function sampleButton(sample) {
  const button = document.createElement("button");
  const name = sample.file.split("/").pop();
  button.className = "sample";
  button.title = `a ${sample.label} (${name})`;
  button.dataset.label = sample.label;
  const loaded = fetch(`/${sample.file}`, { headers: authHeaders() }).then((r) => {
    if (!r.ok) throw new Error(`${r.status}`);
    return r.blob();
  });
  loaded.then((blob) => {
    const img = document.createElement("img");
    img.alt = sample.label;
    img.src = URL.createObjectURL(blob);
    button.append(img);
  }).catch(() => { button.textContent = sample.label; });
  button.addEventListener("click", async () => predict(new File([await loaded], name, { type: "image/jpeg" })));
  return button;
}

// The API's box is in pixels of the image as displayed (EXIF applied): the browser
// shows images EXIF-rotated too, so scale by rendered size / reported size.
function placeBox(result) {
  const photo = $("photo");
  const sx = photo.clientWidth / result.width;
  const sy = photo.clientHeight / result.height;
  const box = $("box");
  box.style.left = `${result.box.x * sx}px`;
  box.style.top = `${result.box.y * sy}px`;
  box.style.width = `${result.box.w * sx}px`;
  box.style.height = `${result.box.h * sy}px`;
  box.dataset.x = result.box.x; box.dataset.y = result.box.y;
  box.dataset.w = result.box.w; box.dataset.h = result.box.h;
}

async function predict(file) {
  $("status").className = "";
  $("status").textContent = `scoring ${file.name}…`;
  $("result").hidden = true;
  const form = new FormData();
  form.append("image", file, file.name);
  let response, body;
  try {
    response = await fetch("/predict", { method: "POST", body: form, headers: authHeaders() });
    body = await response.json();
  } catch (err) {
    $("status").className = "error";
    $("status").textContent = `request failed: ${err}`;
    return;
  }
  if (!response.ok) {
    if (response.status === 401) askForKey();
    $("status").className = "error";
    $("status").textContent = `${response.status} ${body.error}: ${body.detail}`;
    return;
  }
  window.lastResult = body;
  const photo = $("photo");
  photo.onload = () => {
    $("result").hidden = false;
    placeBox(body);
    $("status").textContent = "done";
    document.body.dataset.state = "done";
  };
  $("label").textContent = body.label;
  $("score").textContent = `${(body.score * 100).toFixed(1)}%`;
  const b = body.box;
  $("box-text").textContent =
    `box x=${b.x.toFixed(0)} y=${b.y.toFixed(0)} w=${b.w.toFixed(0)} h=${b.h.toFixed(0)} in a ${body.width}×${body.height} image`;
  photo.src = URL.createObjectURL(file);
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // so that picking the same file again (say, after entering the key) scores it again
  if (file) predict(file);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
});
window.addEventListener("resize", () => { if (!$("result").hidden && window.lastResult) placeBox(window.lastResult); });
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("key-form").hidden = true;
  showModel();
});
showModel();
