"""The page `transfer serve` answers `GET /` with: drop an image, see classes.

One self-contained HTML document: its style and script are inline and it
loads nothing from elsewhere (the server sends a Content-Security-Policy
that forbids it). The chosen image is posted to `predict` (relative, so
the page works behind a path prefix) as a multipart upload, and the
answer's classes are listed best first with their probabilities as bars.
"""

import html
import json

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ - transfer serve</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; margin: 2rem auto;
         max-width: 44rem; padding: 0 1rem; color: #1d1d1f; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  .sub { color: #666; margin-top: 0; }
  #drop { display: block; border: 2px dashed #8a8a8a; border-radius: 10px;
          padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #e8710a; background: #fff4e8; }
  #file { display: block; margin: 0.8rem auto 0; }
  #main { display: flex; gap: 1.5rem; margin-top: 1.5rem;
          align-items: flex-start; }
  #preview { max-width: 12rem; max-height: 12rem; border-radius: 6px; }
  #preview[hidden] { display: none; }
  #results { list-style: none; padding: 0; margin: 0; flex: 1; }
  .prediction { display: grid; grid-template-columns: 9rem 1fr 4.5rem;
                gap: 0.6rem; align-items: center; margin: 0.35rem 0; }
  .name { font-weight: 600; overflow-wrap: anywhere; }
  .bar { background: #eee; border-radius: 4px; height: 0.9rem; }
  .bar span { display: block; height: 100%; border-radius: 4px;
              background: #e8710a; }
  .probability { text-align: right; font-variant-numeric: tabular-nums; }
  #status { color: #666; min-height: 1.4em; }
  #status.error { color: #b00020; }
</style>
</head>
<body data-state="ready">
<h1>__TITLE__</h1>
<p class="sub">__COUNT__ classes: __CLASSES__</p>
<label id="drop" for="file">Drop an image here, paste one, or choose a file
  <input id="file" type="file" accept="image/*">
</label>
<p id="status"></p>
<div id="main">
  <img id="preview" alt="the image sent" hidden>
  <ol id="results"></ol>
</div>
<script id="config" type="application/json">__CONFIG__</script>
<script>
"use strict";
const config = JSON.parse(document.getElementById("config").textContent);
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const status = document.getElementById("status");
const preview = document.getElementById("preview");
const results = document.getElementById("results");

function say(text, isError) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function render(predictions) {
  results.replaceChildren();
  for (const p of predictions) {
    const row = document.createElement("li");
    row.className = "prediction";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p["class"];
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = (100 * p.probability).toFixed(1) + "%";
    row.append(name, bar, value);
    results.appendChild(row);
  }
}

async function send(file) {
  if (!file) return;
  document.body.dataset.state = "busy";
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  results.replaceChildren();
  say("Predicting " + file.name + "...", false);
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", String(config.top_k));
  const started = performance.now();
  try {
    const response = await fetch("predict", {method: "POST", body: form});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    render(body.predictions);
    const ms = Math.round(performance.now() - started);
    // `transfer serve --reject-below P`: say when the answer is unknown.
    const unknown = body.label === "unknown" ?
      ": unknown (" + String(body.unknown_reason).replace(/_/g, " ") + ")" : "";
    say(file.name + unknown + ": " + ms + " ms", false);
    document.body.dataset.state = "done";
  } catch (error) {
    say("Error: " + error.message, true);
    document.body.dataset.state = "error";
  }
}

input.addEventListener("change", () => send(input.files[0]));
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  send(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.files].find(
    (f) => f.type.startsWith("image/"));
  if (item) send(item);
});
</script>
</body>
</html>
"""


def render_page(title, class_names, top_k):
    """The page's HTML for a model with `class_names`.

    Args:
        title: shown as the heading, e.g. the run directory.
        class_names: the model's classes, listed under the heading.
        top_k: how many classes the page asks for.

    Returns:
        The HTML document, a string.

    Example:

    >>> from transfer.serving.page import render_page
    >>> html = render_page("runs/pets", ["cat", "dog"], 2)
    >>> "<h1>runs/pets</h1>" in html and "cat, dog" in html
    True
    """
    # JSON inside <script>: "</" could end the element early.
    config = json.dumps({"top_k": int(top_k)}).replace("</", "<\\/")
    shown = ", ".join(class_names[:20]) + (
        f" and {len(class_names) - 20} more" if len(class_names) > 20 else "")
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__COUNT__", str(len(class_names)))
            .replace("__CLASSES__", html.escape(shown))
            .replace("__CONFIG__", config))
