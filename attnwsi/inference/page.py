"""`index.html`: the predictions of a `predict` run as one page a pathologist opens in a browser.

One card per slide: its thumbnail, the deciding sub-image's attention heatmap, the predicted class with the
class probabilities, and links to every heatmap and to the slide's GeoJSON (for QuPath). Cards are sorted by
predicted risk (highest first) and can be re-sorted by risk, by confidence or by name. Self-contained: no
server, no network, no external script or style; the pictures are the run's own files, linked relatively.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from attnwsi.io import write_text_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; width: 560px; }
.card img { max-width: 100%; border: 1px solid #eee; }
.card img[data-loaded="no"] { outline: 2px dashed #d00; min-height: 3em; }
.pictures { display: grid; grid-template-columns: 1fr 2fr; gap: 0.5em; align-items: start; }
.prediction { font-size: 1.2em; font-weight: bold; }
table { border-collapse: collapse; font-size: 0.9em; } td { padding: 0 0.6em 0 0; }
.bar { display: inline-block; height: 0.7em; background: #e45a1a; vertical-align: middle; }
.links a { display: inline-block; margin-right: 0.6em; font-size: 0.85em; }
button { margin-right: 0.4em; }
"""

SCRIPT = """
// every picture says whether it loaded (data-loaded="yes"/"no"); a missing file is outlined in red
function markPictures() {
  document.querySelectorAll('img').forEach(img => {
    const mark = () => { img.dataset.loaded = img.naturalWidth > 0 ? 'yes' : 'no'; };
    if (img.complete) { mark(); } else { img.addEventListener('load', mark); img.addEventListener('error', mark); }
  });
}
window.addEventListener('load', markPictures);
function sortCards(key, descending) {
  const cards = document.querySelector('.cards');
  [...cards.children].sort((a, b) => {
    const x = a.dataset[key], y = b.dataset[key];
    const order = isNaN(x) ? x.localeCompare(y) : Number(x) - Number(y);
    return descending ? -order : order;
  }).forEach(card => cards.appendChild(card));
}
"""


HEATMAPS = {"mean": "that piece's mean attention",
            "lesion": "the lesion probability of that piece's windows (sliding window)"}


def write_index(out: Path, predictions: pd.DataFrame, classes: list[str], heatmap: str = "mean") -> Path:
    """Write `out/index.html` for the slides of `predictions` (predict's table) and return its path; each card
    shows the deciding sub-image's `<sub_image_id>_<heatmap>.png` (`HEATMAPS`)."""
    slides = predictions[predictions["level"] == "slide"].copy()
    slides["risk"] = slides["prediction"].map(classes.index)
    slides = slides.sort_values(["risk", "slide_id"], ascending=[False, True])
    cards = [slide_card(out, row, predictions, classes, heatmap) for _, row in slides.iterrows()]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attnwsi predictions</title><style>{STYLE}</style></head>
<body>
<h1>Predictions: {len(cards)} slides</h1>
<p>Classes in increasing risk: {escape(", ".join(classes))}. A slide takes the highest-risk class predicted for
any of its tissue pieces; the heatmap is {HEATMAPS[heatmap]}.
Sort: <button onclick="sortCards('risk', true)">risk</button><button onclick="sortCards('confidence', true)">
confidence</button><button onclick="sortCards('name', false)">name</button></p>
<div class="cards">
{"".join(cards)}
</div>
<script>{SCRIPT}</script>
</body></html>
"""
    path = out / "index.html"
    write_text_atomic(path, page)
    return path


def slide_card(out: Path, row: pd.Series, predictions: pd.DataFrame, classes: list[str], heatmap: str) -> str:
    """One slide's card (see the module docstring)."""
    slide_id, predicted, deciding = str(row["slide_id"]), str(row["prediction"]), str(row["decided_by"])
    probabilities = "".join(
        f"<tr><td>{escape(c)}</td><td>{row[f'p_{c}']:.3f}</td>"
        f"<td><span class='bar' style='width:{100 * row[f'p_{c}']:.0f}px'></span></td></tr>" for c in classes)
    heatmaps = sorted((out / "heatmaps" / slide_id).glob("*.png"))
    links = "".join(f"<a href='{escape(link(out, p))}'>{escape(p.stem)}</a>" for p in heatmaps)
    geojson = out / "geojson" / f"{slide_id}.geojson"
    label = row.get("label")
    label_text = f" (label: {escape(str(label))})" if isinstance(label, str) and label else ""
    n_pieces = int(((predictions["slide_id"] == row["slide_id"]) & (predictions["level"] == "sub_image")).sum())
    thumbnail = link(out, out / "thumbnails" / f"{slide_id}.jpg")
    picture = link(out, out / "heatmaps" / slide_id / f"{deciding}_{heatmap}.png")
    return f"""<div class="card" data-risk="{classes.index(predicted)}" data-confidence="{row[f'p_{predicted}']:.6f}"
 data-name="{escape(slide_id)}">
<h2>{escape(slide_id)}</h2>
<div class="prediction">{escape(predicted)}{label_text}</div>
<div class="pictures"><img src="{escape(thumbnail)}" alt="{escape(slide_id)}">
<img src="{escape(picture)}" alt="{escape(heatmap)} map of {escape(deciding)}">
</div>
<p>Decided by tissue piece {escape(deciding)} of {n_pieces}.</p>
<table>{probabilities}</table>
<p class="links">{links}<a href="{escape(link(out, geojson))}">GeoJSON (QuPath)</a></p>
</div>
"""


def link(out: Path, path: Path) -> str:
    """`path` relative to the page, with forward slashes."""
    return path.relative_to(out).as_posix()
