"""``report.html``: one self-contained page a person reads to see what a scan found."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

__all__ = ["render_report"]

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}
.sub{color:#666;margin-bottom:16px}
.stats span{display:inline-block;margin-right:18px;padding:6px 10px;
background:#fff;border:1px solid #ddd;border-radius:6px}
.filters{margin:14px 0}
.filters label{margin-right:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px}
.card.fake{border-left:5px solid #c62828}
.card.real{border-left:5px solid #2e7d32}
.card.uncertain{border-left:5px solid #ef6c00}
.card.error{border-left:5px solid #888}
.card.ood{border-left-style:dashed;opacity:.8}
.imgs{display:flex;gap:6px}
.imgs figure{margin:0;text-align:center;font-size:11px;color:#777}
.imgs img{width:140px;height:140px;object-fit:contain;image-rendering:pixelated;background:#eee}
.verdict{font-weight:600;font-size:15px}
.fake .verdict{color:#c62828}
.real .verdict{color:#2e7d32}
.uncertain .verdict{color:#ef6c00}
.name{font-family:monospace;font-size:12px;word-break:break-all;color:#444}
.bar{height:6px;background:#eee;border-radius:3px;margin:4px 0}
.bar i{display:block;height:6px;background:#c62828;border-radius:3px}
ul.art{margin:6px 0 0 16px;padding:0}
ul.art li{margin-bottom:3px}
.err{color:#b71c1c}
"""

_JS = """
function applyFilter(){
  const v=document.querySelector('input[name=f]:checked').value;
  document.querySelectorAll('.card').forEach(c=>{
    c.style.display=(v==='all'||c.classList.contains(v))?'':'none';});
}
document.querySelectorAll('input[name=f]').forEach(i=>i.addEventListener('change',applyFilter));
"""


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def record_base(index: int, name: str) -> str:
    """File name (no suffix) of the ``index``-th (0-based) result's overlay and thumbnail: order, then stem."""
    stem = _UNSAFE.sub("_", PurePosixPath(name).stem)[:60] or "image"
    return f"{index + 1:06d}_{stem}"


def _card(r: dict[str, Any]) -> str:
    name = html.escape(r["file"])
    if r.get("error"):
        return (
            f'<div class="card error"><div class="verdict">error</div><div class="name">{name}</div>'
            f'<div class="err">{html.escape(r["error"])}</div></div>'
        )
    p = float(r["fake_probability"])
    pred = r["prediction"]
    imgs = ""
    if r.get("thumbnail"):
        imgs += f'<figure><img loading="lazy" src="{html.escape(r["thumbnail"])}" alt="image"><br>image</figure>'
    if r.get("overlay"):
        imgs += f'<figure><img loading="lazy" src="{html.escape(r["overlay"])}" alt="GradCAM"><br>evidence</figure>'
    arts = ""
    if r.get("artifacts"):
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in r["artifacts"].items())
        arts = f'<ul class="art">{items}</ul>'
    # An out-of-domain verdict is shown as such: its probability was never measured on images like it.
    ood = r.get("in_domain") is False
    verdict = f"{pred} &middot; P(fake) = {p:.3f}"
    if ood:
        verdict = f"{pred}? &middot; out of domain (score {float(r['domain_score']):.1f}): unreliable"
    prov = provenance_line(r.get("provenance"))
    prov_html = f'<div class="prov">{html.escape(prov)}</div>' if prov else ""
    return (
        f'<div class="card {pred}{" ood" if ood else ""}"><div class="imgs">{imgs}</div>'
        f'<div class="verdict">{verdict}</div>'
        f'<div class="bar"><i style="width:{p * 100:.1f}%"></i></div>'
        f'<div class="name">{name}</div>{prov_html}{arts}</div>'
    )


def provenance_line(prov: dict[str, Any] | None) -> str | None:
    """One line on what the file declares about its origin, or None when it declares nothing."""
    if not prov:
        return None
    if prov.get("tampered"):
        return "C2PA manifest present but it fails validation: the file was changed after signing"
    c2pa = prov.get("c2pa") or {}
    what = prov.get("generator") or prov.get("digital_source_type")
    if prov.get("declares_ai"):
        signer = f", signed by {c2pa['signer']}" if c2pa.get("valid") and c2pa.get("signer") else ""
        return f"declares it was generated{f' ({what})' if what else ''}: {', '.join(prov.get('sources', []))}{signer}"
    if c2pa.get("present"):
        return f"C2PA manifest, valid, signed by {c2pa.get('signer') or 'an unknown signer'}; declares no generation"
    return f"metadata names {what}" if what else None


def render_report(results: Sequence[dict[str, Any]], *, title: str, model_version: str, files: Sequence[str]) -> str:
    """The page for ``results`` (the records of ``results.jsonl`` plus an optional ``thumbnail``).

    Args:
        results: one record per input, in scan order.
        title: the page heading.
        model_version: shown so a reader knows which weights produced the verdicts.
        files: other output files to link (``task1.json`` and the like).
    """
    n_fake = sum(1 for r in results if r.get("prediction") == "fake")
    n_real = sum(1 for r in results if r.get("prediction") == "real")
    n_uncertain = sum(1 for r in results if r.get("prediction") == "uncertain")
    n_err = sum(1 for r in results if r.get("error"))
    n_ood = sum(1 for r in results if r.get("in_domain") is False)
    links = " &middot; ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in files)
    cards = "\n".join(_card(r) for r in results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="sub">model {html.escape(model_version)} &middot; {links}</div>
<div class="stats"><span>{len(results)} inputs</span><span>{n_fake} fake</span><span>{n_real} real</span>
<span>{n_uncertain} uncertain</span><span>{n_err} errors</span><span>{n_ood} out of domain</span></div>
<div class="filters">Show:
<label><input type="radio" name="f" value="all" checked> all</label>
<label><input type="radio" name="f" value="fake"> fake</label>
<label><input type="radio" name="f" value="real"> real</label>
<label><input type="radio" name="f" value="uncertain"> uncertain</label>
<label><input type="radio" name="f" value="error"> errors</label>
<label><input type="radio" name="f" value="ood"> out of domain</label></div>
<div class="grid">
{cards}
</div><script>{_JS}</script></body></html>
"""
