// agelens web page: pick a photo (drop, choose, paste, webcam or an example), send it to
// POST /v1/analyze, draw the boxes and "F 34 (29–41)" labels on a canvas, list the faces.
// Plain ES module, no dependencies; the page's CSP forbids inline scripts and styles.

const DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
const MAX_CANVAS_SIDE = 2000; // the drawing is scaled down to this, the boxes with it
const KEY_STORAGE = "agelens.apiKey";
const COLORS = { F: "#c2255c", M: "#1971c2" };
const GENDER_WORDS = { F: "female", M: "male" };

const $ = (id) => document.getElementById(id);

const state = {
  request: 0, // id of the latest analysis; older answers are dropped
  input: null, // {blob, name} of the latest photo, for a retry after an API key is entered
  image: null, // the decoded photo (HTMLImageElement) the result is drawn over
  result: null, // the JSON answer of the server
  active: -1, // face highlighted from the table
  stream: null, // the webcam's MediaStream while it runs
};

// ------------------------------------------------------------------ formatting

/** Rounding like Python's `f"{x:.0f}"` (halves to even), so labels match `agelens analyze`. */
export function roundAge(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The on-image label, exactly like `F 34 (29–41)` (en dash). */
export function faceLabel(face) {
  const [low, high] = face.age_interval;
  return `${face.gender} ${roundAge(face.age_years)} (${roundAge(low)}–${roundAge(high)})`;
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(bytes % (1024 * 1024) ? 1 : 0)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function maxUploadBytes() {
  const value = Number(document.body.dataset.maxUploadBytes);
  return Number.isFinite(value) && value > 0 ? value : DEFAULT_MAX_UPLOAD_BYTES;
}

// ------------------------------------------------------------------ status and errors

function setStatus(text, busy = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("busy", busy);
  if (busy) revealMessages();
}

/** Scroll the messages (next to the upload) into view when they are off-screen, e.g. after
 * an example further down the page was picked. */
function revealMessages() {
  const box = $("messages").getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) {
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("messages").scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "nearest" });
  }
}

function showError(title, detail) {
  $("error-title").textContent = title;
  $("error-detail").textContent = detail || "";
  $("error").hidden = false;
  $("result").hidden = true; // an older result would read as the answer for this file
  setStatus("");
  revealMessages();
}

function clearError() {
  $("error").hidden = true;
  $("error-title").textContent = "";
  $("error-detail").textContent = "";
}

/** [title, detail] for a failed /v1/analyze answer. */
function describeError(response, body, name) {
  const code = body && body.error ? body.error.code : null;
  const message = body && body.error ? body.error.message : "";
  const status = response.status;
  if (code === "image_decode_error" || code === "unsupported_media_type") {
    return [
      "This file is not an image we can read.",
      `${name} could not be decoded as a photo. Choose a JPEG, PNG, WebP or HEIC image.`,
    ];
  }
  if (code === "image_too_large") {
    return ["This photo is too large.", `${message}. Make it smaller and try again.`];
  }
  if (code === "request_too_large" || status === 413) {
    return [
      "This photo is too large for the server.",
      `${message || `${name} is over the server's upload limit`}. Make it smaller and try again.`,
    ];
  }
  if (code === "unauthorized" || status === 401) {
    showKeyForm(true);
    return [
      "This server needs an API key.",
      `${message ? `${message}. ` : ""}Enter your key below; the photo is analysed once it is saved.`,
    ];
  }
  if (code === "rate_limited" || status === 429) {
    const wait = response.headers.get("Retry-After");
    return ["Too many requests.", `Wait ${wait ? plural(Number(wait), "second") : "a moment"} and try again.`];
  }
  if (code === "overloaded" || code === "not_ready" || status === 503) {
    return ["The server is busy.", `${message || "It cannot take the photo now"}. Try again in a few seconds.`];
  }
  if (code === "timeout" || status === 504) {
    return ["The analysis took too long.", message || "Try a smaller photo."];
  }
  return [`The analysis failed (HTTP ${status}).`, message || response.statusText || ""];
}

// ------------------------------------------------------------------ API key

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage refused (private mode): the key works for this page only
  }
  state.sessionKey = key;
}

function currentKey() {
  return state.sessionKey !== undefined ? state.sessionKey : storedKey();
}

function showKeyForm(focus) {
  const form = $("key-form");
  form.hidden = false;
  $("api-key").value = currentKey();
  if (focus) $("api-key").focus();
}

function setUpKeyForm() {
  if (storedKey()) showKeyForm(false);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey($("api-key").value.trim());
    clearError();
    if (state.input) analyze(state.input.blob, state.input.name);
    else setStatus("API key saved.");
  });
  $("api-key-forget").addEventListener("click", () => {
    storeKey("");
    $("api-key").value = "";
    setStatus("API key forgotten.");
  });
}

// ------------------------------------------------------------------ analysis

function looksLikeImage(blob, name) {
  const type = (blob.type || "").toLowerCase();
  if (type.startsWith("image/")) return true;
  // Some systems give HEIC files or drags from other apps no type: let the server decide.
  if (type === "" || type === "application/octet-stream") return true;
  return /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif)$/i.test(name || "");
}

function readOptions(form) {
  const maxFaces = $("opt-max-faces").value.trim();
  const minFace = $("opt-min-face").value.trim();
  if (maxFaces) form.append("max_faces", String(Math.max(1, Math.round(Number(maxFaces)))));
  if (minFace) form.append("min_face", String(Math.max(0, Number(minFace))));
}

function decodeLocally(blob) {
  // An <img> honours EXIF orientation like the server does; HEIC fails in most browsers.
  return new Promise((resolve) => {
    const url = URL.createObjectURL(blob);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => {
      URL.revokeObjectURL(url);
      resolve(null);
    };
    image.src = url;
  });
}

/** Check, upload and show one photo. `blob` is a File or Blob, `name` its file name. */
export async function analyze(blob, name) {
  const request = ++state.request;
  clearError();
  name = name || blob.name || "photo";
  state.input = { blob, name };
  if (!looksLikeImage(blob, name)) {
    showError(
      "This file is not an image.",
      `${name} is ${blob.type ? `a ${blob.type} file` : "not a photo"}. Choose a JPEG, PNG, WebP or HEIC image.`,
    );
    return;
  }
  if (blob.size === 0) {
    showError("This file is empty.", `${name} holds no data. Choose another photo.`);
    return;
  }
  const limit = maxUploadBytes();
  if (blob.size > limit) {
    showError(
      "This photo is too large.",
      `${name} is ${formatBytes(blob.size)}; the limit is ${formatBytes(limit)}. Make it smaller and try again.`,
    );
    return;
  }

  setStatus(`Analysing ${name}…`, true);
  $("result").setAttribute("aria-busy", "true");
  const started = performance.now();
  let image = await decodeLocally(blob);
  const form = new FormData();
  form.append("image", blob, name);
  readOptions(form);
  if (!image) form.append("return_image", "true"); // the server draws what the browser cannot
  const headers = {};
  const key = currentKey();
  if (key) headers["X-API-Key"] = key;

  let response;
  let body = null;
  try {
    response = await fetch("/v1/analyze", { method: "POST", body: form, headers });
    try {
      body = await response.json();
    } catch {
      body = null;
    }
  } catch (error) {
    if (request !== state.request) return;
    $("result").removeAttribute("aria-busy");
    showError("The server could not be reached.", `Check your connection and try again (${error.message}).`);
    return;
  }
  if (request !== state.request) return; // a newer photo was chosen meanwhile
  $("result").removeAttribute("aria-busy");
  if (!response.ok || !body || !Array.isArray(body.faces)) {
    const [title, detail] = describeError(response, body, name);
    showError(title, detail);
    return;
  }
  let drawnByServer = false;
  if (body.image_jpeg_base64) {
    if (!image) {
      // Not fetch(data: URL): the CSP's connect-src is 'self' only.
      const bytes = Uint8Array.from(atob(body.image_jpeg_base64), (c) => c.charCodeAt(0));
      image = await decodeLocally(new Blob([bytes], { type: "image/jpeg" }));
      drawnByServer = Boolean(image);
    }
    delete body.image_jpeg_base64;
  }
  if (key && !storedKey()) storeKey(key);
  showResult(body, image, name, drawnByServer, performance.now() - started);
}

// ------------------------------------------------------------------ result

function showResult(result, image, name, drawnByServer, elapsedMs) {
  if (state.image && state.image.src.startsWith("blob:")) URL.revokeObjectURL(state.image.src);
  state.result = result;
  state.image = image;
  state.drawnByServer = drawnByServer;
  state.name = name;
  state.active = -1;

  const faces = result.faces;
  $("result").hidden = false;
  $("no-face").hidden = faces.length > 0;
  $("faces-wrap").hidden = faces.length === 0;
  fillTable(faces);
  draw();

  const labels = faces.map(faceLabel);
  const canvas = $("canvas");
  canvas.setAttribute(
    "aria-label",
    faces.length
      ? `${name} with ${plural(faces.length, "face")} marked: ${labels.join(", ")}`
      : `${name}: no face found`,
  );
  $("caption").textContent = faces.length
    ? `${name}: ${labels.join(" · ")}. Pink: F (female), blue: M (male); age with its 80% interval.`
    : name;
  const seconds = (elapsedMs / 1000).toFixed(1);
  setStatus(
    faces.length
      ? `${plural(faces.length, "face")} found in ${name} (${seconds} s).`
      : `No face found in ${name} (${seconds} s).`,
  );
  const top = $("result").getBoundingClientRect().top;
  if (top > window.innerHeight * 0.6 || top < 0) {
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("result").scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  }
}

function fillTable(faces) {
  const tbody = $("faces").tBodies[0];
  tbody.replaceChildren();
  faces.forEach((face, index) => {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.index = String(index);
    row.dataset.label = faceLabel(face);
    const cells = [
      String(index + 1),
      null, // gender, built below
      `${Math.round(face.gender_probability * 100)}%`,
      face.age_years.toFixed(1),
      `${roundAge(face.age_interval[0])}–${roundAge(face.age_interval[1])}`,
      face.detection_score.toFixed(2),
      face.box_xyxy.map((v) => Math.round(v)).join(", "),
    ];
    cells.forEach((text, column) => {
      const cell = document.createElement(column === 0 ? "th" : "td");
      if (column === 0) cell.scope = "row";
      if (text === null) {
        const tag = document.createElement("span");
        tag.className = `gender gender-${face.gender}`;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.setAttribute("aria-hidden", "true");
        const abbr = document.createElement("abbr");
        abbr.title = GENDER_WORDS[face.gender] || face.gender;
        abbr.textContent = face.gender;
        tag.append(swatch, abbr);
        cell.append(tag);
      } else {
        cell.textContent = text;
      }
      row.append(cell);
    });
    const activate = () => setActive(index);
    const deactivate = () => setActive(-1);
    row.addEventListener("mouseenter", activate);
    row.addEventListener("focus", activate);
    row.addEventListener("mouseleave", deactivate);
    row.addEventListener("blur", deactivate);
    tbody.append(row);
  });
}

function setActive(index) {
  if (state.active === index) return;
  state.active = index;
  for (const row of $("faces").tBodies[0].rows) {
    row.classList.toggle("active", Number(row.dataset.index) === index);
  }
  draw();
}

/** Draw the photo and, unless the server already did, every face's box and label. */
function draw() {
  const canvas = $("canvas");
  const { image, result } = state;
  if (!result) return;
  const [imageW, imageH] = result.image_wh;
  const naturalW = image ? image.naturalWidth : imageW;
  const naturalH = image ? image.naturalHeight : imageH;
  const fit = Math.min(1, MAX_CANVAS_SIDE / Math.max(naturalW, naturalH));
  const width = Math.max(1, Math.round(naturalW * fit));
  const height = Math.max(1, Math.round(naturalH * fit));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (image) ctx.drawImage(image, 0, 0, width, height);
  else {
    ctx.fillStyle = "#e9ecf3";
    ctx.fillRect(0, 0, width, height);
  }
  if (state.drawnByServer) return;

  // Canvas pixels per CSS pixel, so lines and text keep a readable size on screen.
  const shown = canvas.getBoundingClientRect().width;
  const perCss = shown > 0 ? width / shown : Math.max(1, width / 800);
  const sx = width / imageW;
  const sy = height / imageH;
  const fontPx = Math.round(13 * perCss);
  ctx.font = `600 ${fontPx}px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif`;
  ctx.textBaseline = "top";

  const padX = 4 * perCss;
  const padY = 3 * perCss;
  const boxes = result.faces.map((face) => {
    const [x1, y1, x2, y2] = face.box_xyxy;
    return { left: x1 * sx, top: y1 * sy, width: (x2 - x1) * sx, height: (y2 - y1) * sy };
  });
  const labels = placeLabels(
    boxes,
    result.faces.map((face) => ctx.measureText(faceLabel(face)).width + 2 * padX),
    fontPx + 2 * padY,
    width,
    height,
  );
  canvas.dataset.labelBoxes = JSON.stringify(labels.map((l) => [l.x, l.y, l.width, l.height]));

  const order = result.faces.map((_, i) => i).filter((i) => i !== state.active);
  if (state.active >= 0) order.push(state.active); // the highlighted face on top
  for (const index of order) {
    const face = result.faces[index];
    const color = COLORS[face.gender] || "#555";
    const { left, top, width: boxW, height: boxH } = boxes[index];
    const line = Math.max(1.5, (index === state.active ? 4 : 2.5) * perCss);
    if (index === state.active) {
      ctx.lineWidth = line + 3 * perCss;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
      ctx.strokeRect(left, top, boxW, boxH);
    }
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(left, top, boxW, boxH);
  }
  for (const index of order) {
    const label = labels[index];
    ctx.fillStyle = COLORS[result.faces[index].gender] || "#555";
    ctx.fillRect(label.x, label.y, label.width, label.height);
    ctx.fillStyle = "#ffffff";
    ctx.fillText(faceLabel(result.faces[index]), label.x + padX, label.y + padY);
  }
}

function overlaps(a, b) {
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

/**
 * Where each face's label goes (canvas pixels): above its box if there is room and no label
 * placed before it is there, else below it, else inside its top edge, else the nearest free
 * spot stepping up or down from above the box. On a phone a label is large beside the faces of
 * a group photo, so labels of neighbouring faces would otherwise cover each other.
 */
export function placeLabels(boxes, labelWidths, labelHeight, width, height) {
  const placed = [];
  const clampY = (y) => Math.max(0, Math.min(height - labelHeight, y));
  boxes.forEach((box, index) => {
    const labelWidth = Math.min(labelWidths[index], width);
    const x = Math.max(0, Math.min(box.left, width - labelWidth));
    const above = box.top - labelHeight;
    const candidates = [above, box.top + box.height, box.top];
    for (let step = 1; step <= 40; step += 1) {
      candidates.push(above - step * labelHeight, box.top + box.height + step * labelHeight);
    }
    let spot = null;
    for (const y of candidates) {
      if (y < 0 || y + labelHeight > height) continue;
      const rect = { x, y, width: labelWidth, height: labelHeight };
      if (!placed.some((other) => overlaps(rect, other))) {
        spot = rect;
        break;
      }
    }
    placed.push(spot || { x, y: clampY(above), width: labelWidth, height: labelHeight });
  });
  return placed;
}

function downloadJson() {
  if (!state.result) return;
  const text = `${JSON.stringify(state.result, null, 2)}\n`;
  const blob = new Blob([text], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${(state.name || "photo").replace(/\.[^.]+$/, "")}.agelens.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ------------------------------------------------------------------ inputs: file, drop, paste

function setUpFileInputs() {
  const input = $("file-input");
  const zone = $("dropzone");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (file) analyze(file, file.name);
    input.value = ""; // choosing the same file again must fire `change` again
  });

  // A photo dropped anywhere on the page is taken; the zone shows where to aim.
  let depth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    zone.classList.add("dragover");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.classList.remove("dragover");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragover");
    const file = event.dataTransfer.files[0];
    if (file) analyze(file, file.name);
  });

  document.addEventListener("paste", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    const file = files.find((f) => f.type.startsWith("image/")) || files[0];
    if (!file) return;
    event.preventDefault();
    const extension = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    analyze(file, file.name && file.name !== "image.png" ? file.name : `pasted.${extension}`);
  });
}

function hasFiles(event) {
  return Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
}

// ------------------------------------------------------------------ webcam

function cameraUnavailableReason() {
  if (!window.isSecureContext) {
    return "The camera needs a secure page: open it over https:// or on localhost.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This browser does not let web pages use a camera.";
  }
  return null;
}

function disableCamera(reason) {
  $("camera-start").disabled = true;
  $("camera-note").textContent = reason;
  $("camera-note").hidden = false;
}

async function checkCamera() {
  const reason = cameraUnavailableReason();
  if (reason) {
    disableCamera(reason);
    return;
  }
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    if (!devices.some((d) => d.kind === "videoinput")) {
      disableCamera("No camera was found on this device.");
      return;
    }
  } catch {
    // enumerateDevices refused: let getUserMedia say what is wrong
  }
  $("camera-start").disabled = false;
  $("camera-note").hidden = true;
}

async function startCamera() {
  clearError();
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } },
      audio: false,
    });
  } catch (error) {
    const refused = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
    const missing = error && (error.name === "NotFoundError" || error.name === "OverconstrainedError");
    showError(
      "The camera could not be started.",
      refused
        ? "Permission to use the camera was refused; allow it in the browser's site settings."
        : missing
          ? "No camera was found on this device."
          : `${error && error.message ? error.message : error}`,
    );
    return;
  }
  const video = $("camera-video");
  video.srcObject = state.stream;
  $("camera").hidden = false;
  $("camera-start").disabled = true;
  $("camera-snap").focus();
  setStatus("Camera on: take a snapshot when ready.");
}

function stopCamera() {
  stopLive();
  if (state.stream) {
    for (const track of state.stream.getTracks()) track.stop();
  }
  state.stream = null;
  $("camera-video").srcObject = null;
  $("camera").hidden = true;
  $("camera-start").disabled = false;
}

function snapshot() {
  const video = $("camera-video");
  if (!video.videoWidth) {
    setStatus("The camera is not ready yet; try again in a moment.");
    return;
  }
  const grab = document.createElement("canvas");
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  grab.toBlob(
    (blob) => {
      if (blob) analyze(blob, `snapshot-${new Date().toISOString().slice(0, 19).replace(/:/g, "-")}.jpg`);
    },
    "image/jpeg",
    0.92,
  );
}

// ------------------------------------------------------------------ live tracking

const LIVE_FPS = 5; // frames a second sent at most; fewer when the server is slower
const LIVE_MAX_SIDE = 640; // frames are scaled down to this before they are sent
const UNKNOWN_COLOR = "#6b7280";
const live = { socket: null, inFlight: false, timer: 0, frames: 0, lastSent: 0 };

function liveUrl() {
  const protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return `${protocol}//${location.host}/v1/live`;
}

function startLive() {
  if (live.socket || !state.stream) return;
  clearError();
  const socket = new WebSocket(liveUrl());
  Object.assign(live, { socket, inFlight: false, frames: 0, lastSent: 0 });
  socket.addEventListener("open", () => {
    const start = { type: "start", fps: LIVE_FPS };
    const key = currentKey();
    if (key) start.api_key = key;
    socket.send(JSON.stringify(start));
  });
  socket.addEventListener("message", (event) => onLiveMessage(socket, JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (live.socket !== socket) return;
    stopLive();
    if (event.code === 4401) showKeyForm(true);
    if (event.code >= 4000) showError("Live tracking stopped.", event.reason || `code ${event.code}`);
  });
  $("live-start").hidden = true;
  $("live-stop").hidden = false;
  $("live").hidden = false;
  $("live-status").textContent = "Connecting…";
  $("live-people").replaceChildren();
}

function stopLive() {
  const socket = live.socket;
  live.socket = null;
  clearTimeout(live.timer);
  if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
  const overlay = $("live-overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  $("live-start").hidden = false;
  $("live-stop").hidden = true;
  if (live.frames) $("live-status").textContent = `Stopped after ${plural(live.frames, "frame")}.`;
}

function onLiveMessage(socket, message) {
  if (live.socket !== socket) return;
  if (message.type === "ready") {
    $("live-status").textContent = "Tracking…";
    sendLiveFrame();
    return;
  }
  live.inFlight = false;
  if (message.type === "frame") {
    live.frames += 1;
    drawLive(message);
    showLivePeople(message.people);
    $("live-status").textContent =
      `${plural(live.frames, "frame")} tracked, ${message.dropped} dropped while the server was busy.`;
    document.body.dataset.liveFrames = String(live.frames); // tests wait for this
  } else if (message.type === "error") {
    $("live-status").textContent = `A frame was refused: ${message.message}`;
  }
  const wait = Math.max(0, 1000 / LIVE_FPS - (performance.now() - live.lastSent));
  live.timer = setTimeout(sendLiveFrame, wait);
}

/** Send the camera's current picture, unless one is still being tracked: while the server is
 * busy, camera frames are skipped, never queued. */
function sendLiveFrame() {
  const socket = live.socket;
  const video = $("camera-video");
  if (!socket || socket.readyState !== WebSocket.OPEN || live.inFlight) return;
  if (!video.videoWidth) {
    live.timer = setTimeout(sendLiveFrame, 100);
    return;
  }
  const scale = Math.min(1, LIVE_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const grab = document.createElement("canvas");
  grab.width = Math.round(video.videoWidth * scale);
  grab.height = Math.round(video.videoHeight * scale);
  grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
  live.inFlight = true;
  live.lastSent = performance.now();
  grab.toBlob(
    (blob) => {
      if (blob && live.socket === socket && socket.readyState === WebSocket.OPEN) {
        socket.send(blob);
      } else {
        live.inFlight = false;
      }
    },
    "image/jpeg",
    0.8,
  );
}

/** Boxes and labels over the video, mapped from the sent frame to the shown picture (the
 * video element letterboxes it). */
function drawLive(message) {
  const video = $("camera-video");
  const overlay = $("live-overlay");
  const width = video.clientWidth;
  const height = video.clientHeight;
  const ratio = window.devicePixelRatio || 1;
  overlay.width = Math.round(width * ratio);
  overlay.height = Math.round(height * ratio);
  const context = overlay.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const [frameWidth, frameHeight] = message.image_wh;
  const shown = Math.min(width / frameWidth, height / frameHeight);
  const left = (width - frameWidth * shown) / 2;
  const top = (height - frameHeight * shown) / 2;
  context.font = "600 14px system-ui, sans-serif";
  context.textBaseline = "top";
  for (const face of message.faces) {
    const [x1, y1, x2, y2] = face.box_xyxy.map((v) => v * shown);
    const color = COLORS[face.gender] || UNKNOWN_COLOR;
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.strokeRect(left + x1, top + y1, x2 - x1, y2 - y1);
    const label = face.label.replace(/(\d+)-(\d+)/, "$1–$2");
    const textWidth = context.measureText(label).width + 8;
    const labelTop = Math.max(0, top + y1 - 20);
    context.fillStyle = color;
    context.fillRect(left + x1, labelTop, textWidth, 20);
    context.fillStyle = "#fff";
    context.fillText(label, left + x1 + 4, labelTop + 3);
  }
}

function showLivePeople(people) {
  const items = people.map((person) => {
    const item = document.createElement("li");
    const answer =
      person.age_years === null
        ? "no answer yet"
        : `${person.gender} ${roundAge(person.age_years)} (${roundAge(person.age_interval[0])}–${roundAge(person.age_interval[1])})`;
    const seen = Math.max(0, person.last_seen_s - person.first_seen_s);
    item.textContent = `#${person.track_id} ${answer}, in view ${seen.toFixed(0)} s`;
    return item;
  });
  $("live-people").replaceChildren(...items);
}

function setUpCamera() {
  $("live-start").addEventListener("click", startLive);
  $("live-stop").addEventListener("click", stopLive);
  $("camera-start").addEventListener("click", startCamera);
  $("camera-stop").addEventListener("click", stopCamera);
  $("camera-snap").addEventListener("click", snapshot);
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener("devicechange", () => {
      if (!state.stream) checkCamera();
    });
  }
  return checkCamera();
}

// ------------------------------------------------------------------ examples gallery

async function loadExamples() {
  const list = $("examples");
  const empty = $("examples-empty");
  let names = [];
  let reason = null;
  try {
    const response = await fetch("/v1/examples");
    const body = await response.json();
    if (response.ok) {
      names = Array.isArray(body.examples) ? body.examples : [];
      reason = body.reason || null;
    } else {
      reason = body && body.error ? body.error.message : `HTTP ${response.status}`;
    }
  } catch (error) {
    reason = `they could not be loaded (${error.message})`;
  }
  list.replaceChildren();
  if (!names.length) {
    list.hidden = true;
    empty.hidden = false;
    empty.textContent =
      `No example photos${reason ? `: ${reason}` : ""}. To show some, start the server with ` +
      "--examples-dir FOLDER (or set AGELENS_EXAMPLES_DIR) pointing at a folder of photos.";
    return;
  }
  list.hidden = false;
  empty.hidden = true;
  for (const name of names) {
    const url = `/v1/examples/${encodeURIComponent(name)}`;
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = `Analyse ${name}`;
    button.dataset.name = name;
    const thumb = document.createElement("img");
    thumb.src = url;
    thumb.alt = `Example photo ${name}`;
    thumb.loading = "lazy";
    thumb.decoding = "async";
    const caption = document.createElement("span");
    caption.className = "name";
    caption.textContent = name;
    caption.setAttribute("aria-hidden", "true");
    button.append(thumb, caption);
    button.addEventListener("click", () => analyzeExample(name, url));
    item.append(button);
    list.append(item);
  }
}

async function analyzeExample(name, url) {
  clearError();
  setStatus(`Loading ${name}…`, true);
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    await analyze(await response.blob(), name);
  } catch (error) {
    showError("The example could not be loaded.", `${name}: ${error.message}`);
  }
}

// ------------------------------------------------------------------ jobs

const JOB_POLL_MS = 1000;
const JOB_ENDED = new Set(["done", "failed", "expired"]);

function keyHeaders() {
  const key = currentKey();
  return key ? { "X-API-Key": key } : {};
}

function jobMessage(text) {
  $("job-message").textContent = text;
}

async function submitJob(event) {
  event.preventDefault();
  // One URL per line; a space inside a line is part of its URL (percent-encoded).
  const urls = $("job-urls")
    .value.split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean)
    .map(encodeSpaces);
  const zip = $("job-zip").files[0];
  if (!urls.length && !zip) {
    jobMessage("Give image URLs or choose a zip of photos or a video.");
    return;
  }
  let request;
  if (zip) {
    const form = new FormData();
    form.append("file", zip, zip.name);
    readOptions(form);
    request = { method: "POST", body: form, headers: keyHeaders() };
  } else {
    const body = { urls };
    const maxFaces = $("opt-max-faces").value.trim();
    const minFace = $("opt-min-face").value.trim();
    if (maxFaces) body.max_faces = Math.max(1, Math.round(Number(maxFaces)));
    if (minFace) body.min_face = Math.max(0, Number(minFace));
    request = {
      method: "POST",
      body: JSON.stringify(body),
      headers: { ...keyHeaders(), "Content-Type": "application/json" },
    };
  }
  jobMessage("Starting the job…");
  let response;
  let body = null;
  try {
    response = await fetch("/v1/jobs", request);
    body = await response.json().catch(() => null);
  } catch (error) {
    jobMessage(`The server could not be reached (${error.message}).`);
    return;
  }
  if (response.status !== 202 || !body || !body.id) {
    if (response.status === 401) showKeyForm(true);
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    jobMessage(`The job was not started: ${message}.`);
    return;
  }
  jobMessage(`Job started: ${plural(body.images_total, jobUnit(body))}.`);
  $("job-form").reset();
  const item = jobItem(body);
  $("jobs").prepend(item);
  pollJob(item, body.id);
}

/** A line of the URL box as a URL: spaces percent-encoded, as a browser's address bar does. */
function encodeSpaces(line) {
  return line.replace(/ /g, "%20");
}

function jobItem(job) {
  const item = document.createElement("li");
  item.dataset.jobId = job.id;
  const title = document.createElement("strong");
  const kinds = { zip: "zip", urls: "URLs", video: "video" };
  title.textContent = `Job · ${kinds[job.source] || job.source} · ${plural(job.images_total, jobUnit(job))}`;
  // The full id: the one GET /v1/jobs/{id} takes (a shortened one answers 404).
  const id = document.createElement("code");
  id.className = "job-id";
  id.textContent = job.id;
  id.title = "Job id, as the jobs API takes it";
  const progress = document.createElement("progress");
  progress.max = 1;
  progress.setAttribute("aria-label", `Progress of job ${job.id}`);
  const status = document.createElement("span");
  status.className = "job-status";
  const links = document.createElement("span");
  links.className = "job-links";
  const outputs = [
    ["Results (JSON lines)", job.links.results_jsonl, `job-${job.id}.jsonl`],
    ["Results (Parquet)", job.links.results_parquet, `job-${job.id}.parquet`],
    ["Report", job.links.report, `job-${job.id}.html`],
  ];
  if (job.source === "video") {
    outputs[0][0] = "Tracks (JSON lines)";
    outputs[1][0] = "Tracks (Parquet)";
    outputs.push(["People (JSON lines)", job.links.people_jsonl, `job-${job.id}-people.jsonl`]);
    outputs.push(["Annotated video", job.links.video, `job-${job.id}.mp4`]);
  }
  for (const [label, href, file] of outputs) {
    const link = document.createElement("a");
    link.textContent = label;
    link.href = href;
    if (label === "Report") link.target = "_blank";
    link.addEventListener("click", (clicked) => downloadWithKey(clicked, href, file));
    links.append(link);
  }
  links.hidden = true;
  item.append(title, id, progress, status, links);
  showJob(item, job);
  return item;
}

function showJob(item, job) {
  const [progress, status, links] = [
    item.querySelector("progress"),
    item.querySelector(".job-status"),
    item.querySelector(".job-links"),
  ];
  progress.value = job.progress;
  status.dataset.status = job.status;
  const parts = [`${job.status}: ${job.images_done} of ${plural(job.images_total, jobUnit(job))}`];
  parts.push(plural(job.faces, job.source === "video" ? "person" : "face"));
  if (job.errors) parts.push(plural(job.errors, "error"));
  if (job.message) parts.push(job.message);
  status.textContent = parts.join(" · ");
  links.hidden = job.status !== "done";
  if (job.source === "video" && job.status === "done" && !item.dataset.shown) {
    item.dataset.shown = "true";
    showVideoJob(item, job);
  }
}

function jobUnit(job) {
  return job.source === "video" ? "frame" : "image";
}

/** A finished video job: its annotated clip and its people, fetched with the API key. */
async function showVideoJob(item, job) {
  const box = document.createElement("div");
  box.className = "video-job";
  try {
    const [people, clip] = await Promise.all([
      fetch(job.links.people_jsonl, { headers: keyHeaders() }).then((r) => r.text()),
      fetch(job.links.video, { headers: keyHeaders() }).then((r) => (r.ok ? r.blob() : null)),
    ]);
    if (clip) {
      const video = document.createElement("video");
      video.controls = true;
      video.src = URL.createObjectURL(clip);
      video.setAttribute("aria-label", `Annotated video of job ${job.id.slice(0, 8)}`);
      box.append(video);
    }
    const rows = people
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line));
    const table = document.createElement("table");
    table.className = "people";
    const head = document.createElement("thead");
    const headRow = document.createElement("tr");
    for (const name of ["#", "Gender", "Age", "Interval", "In view (s)"]) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = name;
      headRow.append(cell);
    }
    head.append(headRow);
    table.append(head);
    const body = document.createElement("tbody");
    for (const person of rows) {
      const row = document.createElement("tr");
      const cells = [
        `#${person.track_id}`,
        person.gender || "–",
        person.age_years === null ? "–" : String(roundAge(person.age_years)),
        person.age_years === null
          ? "–"
          : `${roundAge(person.age_low_years)}–${roundAge(person.age_high_years)}`,
        `${person.first_seen_s.toFixed(1)}–${person.last_seen_s.toFixed(1)}`,
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      body.append(row);
    }
    table.append(body);
    box.append(table);
  } catch (error) {
    box.textContent = `The results could not be shown (${error.message}).`;
  }
  item.append(box);
}

async function pollJob(item, id) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
    let job;
    try {
      const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}`, { headers: keyHeaders() });
      if (response.status === 404) {
        item.querySelector(".job-status").textContent = "deleted";
        return;
      }
      if (!response.ok) continue;
      job = await response.json();
    } catch {
      continue; // the server may be restarting; jobs survive that
    }
    showJob(item, job);
    if (JOB_ENDED.has(job.status)) return;
  }
}

/** Links cannot send the API key: with a key, fetch the file and save it instead. */
async function downloadWithKey(event, href, file) {
  if (!currentKey()) return; // a plain link works without keys
  event.preventDefault();
  const response = await fetch(href, { headers: keyHeaders() });
  if (!response.ok) {
    jobMessage(`The download failed (HTTP ${response.status}).`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = file;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ------------------------------------------------------------------ start

function start() {
  $("max-size").textContent = formatBytes(maxUploadBytes());
  $("download").addEventListener("click", downloadJson);
  setUpFileInputs();
  setUpKeyForm();
  $("job-form").addEventListener("submit", submitJob);
  if ("ResizeObserver" in window) {
    let lastWidth = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width && width !== lastWidth) {
        lastWidth = width;
        draw();
      }
    }).observe($("canvas"));
  }
  Promise.all([loadExamples(), setUpCamera()]).finally(() => {
    document.body.dataset.ready = "true"; // tests wait for this
  });
}

start();
