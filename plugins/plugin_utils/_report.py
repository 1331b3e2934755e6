# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run report: a self-contained HTML page with per-host results and the plugins' panels."""
from __future__ import annotations

import html
import json
import time

from ansible_collections.exliar.vfio.plugins.plugin_utils._summary import render_host

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
pre{background:#fff;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.failed{color:#b00020;font-weight:bold} .ok{color:#1b5e20} .panel{background:#fff;border:1px solid #bbb;padding:.6em;margin:.6em 0}
"""


def _e(value) -> str:
    return html.escape(str(value))


def render_panel(title: str, content) -> str:
    if isinstance(content, dict):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in content.items())
        body = f"<table>{rows}</table>"
    else:
        body = f"<pre>{_e(content)}</pre>"
    return f'<div class="panel"><h3>{_e(title)}</h3>{body}</div>'


def render_html(results: dict, plugins: dict, title: str = "exliar.vfio run report") -> str:
    """``results``: host -> {facts, failed}; ``plugins``: host -> {summary, panels: [(title, content)]}."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>{_e(time.strftime('%Y-%m-%d %H:%M:%S'))} &middot; {len(results)} host(s)</p>"]
    for host in sorted(set(results) | set(plugins)):
        r = results.get(host, {})
        status = '<span class="failed">FAILED</span>' if r.get("failed") else '<span class="ok">ok</span>'
        parts.append(f"<h2 id='{_e(host)}'>{_e(host)} {status}</h2>")
        if r.get("failed"):
            parts.append(f"<p class='failed'>{_e(r['failed'])}</p>")
        if r.get("facts"):
            parts.append(f"<pre>{_e(chr(10).join(render_host(host, r['facts'])[1:]))}</pre>")
        p = plugins.get(host)
        if p:
            s = p.get("summary", {})
            rows = "".join(
                f"<tr><td>{_e(n)}</td><td>{_e(m.get('version'))}</td><td>{_e(m.get('source'))}</td>"
                f"<td>{_e(m.get('signature'))}</td><td>{_e(', '.join(m.get('hooks', [])))}</td></tr>"
                for n, m in sorted(s.get("plugins", {}).items()))
            parts.append("<h3>Plugins</h3><table><tr><th>plugin</th><th>version</th><th>source</th>"
                         f"<th>signature</th><th>hooks</th></tr>{rows}</table>")
            for f in s.get("failures", []):
                parts.append(f"<p class='failed'>{_e(f['plugin'])} failed in {_e(f['hook'])}: {_e(f['error'])}</p>")
            for name, reason in sorted(s.get("rejected", {}).items()):
                parts.append(f"<p class='failed'>{_e(name)} not loaded: {_e(reason)}</p>")
            for w in s.get("warnings", []):
                parts.append(f"<p>warning: {_e(w)}</p>")
            for title_, content in p.get("panels", []):
                parts.append(render_panel(title_, content))
            if s.get("records"):
                rows = "".join(f"<tr><td>{_e(r.get('plugin'))}</td><td>{_e(r['operation'])}</td>"
                               f"<td>{_e(json.dumps(r.get('details', {})))}</td></tr>" for r in s["records"])
                parts.append(f"<h3>Operations recorded by plugins</h3><table>{rows}</table>")
            if s.get("log"):
                lines = "\n".join(f"[{r['plugin']}] {r['level']}: {r['message']}" for r in s["log"])
                parts.append(f"<h3>Plugin log</h3><pre>{_e(lines)}</pre>")
    parts.append(f"<script type='application/json' id='data'>{_e(json.dumps(sorted(results)))}</script>")
    parts.append("</body></html>")
    return "".join(parts)
