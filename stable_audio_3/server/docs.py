"""GET /docs: a small self-contained page (no CDN, nothing fetched but this server's own /openapi.json)
listing the endpoints, with a key field for servers started with --api-key and a form to send a request.

FastAPI's own pages load their scripts from a CDN (so they fail offline and leak the visit) and, with a key
set, could not be opened at all; this page itself needs no key and holds nothing secret: the key typed in
stays in the tab (sessionStorage) and is sent only to this server.
"""

from __future__ import annotations

import html

# the page's scripts and styles are inline; it may talk to its own server only
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }}
code, pre, textarea, input {{ font-family: ui-monospace, monospace; }}
.op {{ border: 1px solid #ccc; border-radius: 4px; margin: .5em 0; padding: .4em .8em; }}
.method {{ font-weight: bold; display: inline-block; min-width: 4.5em; }}
pre {{ background: #f4f4f4; padding: .6em; overflow-x: auto; white-space: pre-wrap; }}
textarea {{ width: 100%; height: 6em; }}
#status {{ color: #a00; }}
</style></head>
<body>
<h1>{title} <small>{version}</small></h1>
<p>The HTTP API: queue a job with <code>POST /v1/generate</code>, follow it with <code>GET /v1/jobs/{{id}}</code>,
fetch its audio from <code>GET /v1/jobs/{{id}}/audio</code>. The machine-readable description is
<a href="openapi.json" id="spec-link">/openapi.json</a>.</p>
<p><label>API key (if the server was started with one):
<input id="key" type="password" autocomplete="off" size="40"></label>
<button id="load">Load the endpoints</button> <span id="status"></span></p>
<div id="ops"></div>
<h2>Send a request</h2>
<p><select id="method"><option>GET</option><option>POST</option><option>DELETE</option></select>
<input id="path" value="/v1/models" size="50"></p>
<p><textarea id="body" placeholder='JSON body, e.g. {{"prompt": "lofi house loop", "duration": 5}}'></textarea></p>
<p><button id="send">Send</button></p>
<pre id="answer"></pre>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("sa3-key") || "";
function headers() {{
  const key = $("key").value.trim();
  sessionStorage.setItem("sa3-key", key);
  return key ? {{"Authorization": "Bearer " + key}} : {{}};
}}
function el(tag, text, cls) {{
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}}
async function load() {{
  $("status").textContent = "";
  const ops = $("ops");
  ops.replaceChildren();
  let spec;
  try {{
    const r = await fetch("openapi.json", {{headers: headers()}});
    if (!r.ok) {{ $("status").textContent = r.status + ": " + (await r.text()); return; }}
    spec = await r.json();
  }} catch (e) {{ $("status").textContent = String(e); return; }}
  for (const [path, item] of Object.entries(spec.paths)) {{
    for (const [method, op] of Object.entries(item)) {{
      const div = el("div", undefined, "op");
      div.dataset.op = method.toUpperCase() + " " + path;
      const head = el("div");
      head.append(el("span", method.toUpperCase(), "method"), el("code", path), el("span", " " + (op.summary || "")));
      div.append(head);
      const params = (op.parameters || []).map((p) => p.name + " (" + p.in + ")");
      if (params.length) div.append(el("div", "parameters: " + params.join(", ")));
      const body = op.requestBody && op.requestBody.content;
      if (body) div.append(el("div", "body: " + Object.keys(body).join(" or ")));
      div.addEventListener("click", () => {{
        $("method").value = method.toUpperCase();
        $("path").value = path;
      }});
      ops.append(div);
    }}
  }}
  const schema = spec.components && spec.components.schemas && spec.components.schemas.GenerateRequest;
  if (schema) {{
    const details = el("details");
    details.append(el("summary", "GenerateRequest fields"), el("pre", JSON.stringify(schema.properties, null, 1)));
    ops.append(details);
  }}
}}
async function send() {{
  const init = {{method: $("method").value, headers: headers()}};
  if (init.method === "POST" && $("body").value.trim()) {{
    init.headers["Content-Type"] = "application/json";
    init.body = $("body").value;
  }}
  try {{
    const r = await fetch($("path").value, init);
    const type = r.headers.get("content-type") || "";
    const text = type.startsWith("audio/") ? "(" + (await r.blob()).size + " bytes of " + type + ")" : await r.text();
    $("answer").textContent = r.status + " " + r.statusText + "\\n" + text;
  }} catch (e) {{ $("answer").textContent = String(e); }}
}}
$("load").addEventListener("click", load);
$("send").addEventListener("click", send);
load();
</script>
</body></html>
"""


def docs_page(title: str, version: str) -> str:
    return _PAGE.format(title=html.escape(title), version=html.escape(version))
