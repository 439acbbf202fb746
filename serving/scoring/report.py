"""The evaluation report: one self-contained HTML file (pictures embedded), openable from disk.

Sections: summary numbers, warnings (classes the model does not know, images
that could not be scored), per-class table, breakdowns (single- vs
multi-object images, box sizes), confusion matrix, IoU histogram, score
calibration (reliability diagram), and the worst images drawn with the
predicted box beside every ground-truth box. Every value a user or a file
name supplies is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path

from clsloc.images import ImageError
from clsloc.serving.scoring.plots import calibration_png, confusion_png, drawn_image, iou_histogram_png, worst
from clsloc.serving.scoring.summary import Labelled

METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "mean_iou": "mean IoU",
    "loc_accuracy": "loc accuracy (class right, IoU ≥ 0.5)",
    "gt_known_loc_accuracy": "GT-known loc accuracy (IoU ≥ 0.5)",
}

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666} .cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e0;border:1px solid #f0c060;border-radius:6px;padding:.6em 1em}
.plots img{max-width:100%} .gallery{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;width:360px} figcaption{font-size:.85em;word-break:break-all}
.gt{color:rgb(0,170,60);font-weight:bold} .pred{color:rgb(230,30,30);font-weight:bold}
"""


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _img(src: str, alt: str, css_class: str = "") -> str:
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="{src}">'


def _stats_table(title: str, rows: dict, marked: Sequence[str] = ()) -> str:
    head = f"<tr><th>{html.escape(title)}</th><th>images</th>" + "".join(
        f"<th>{html.escape(METRIC_NAMES[k])}</th>"
        for k in ("accuracy", "mean_iou", "loc_accuracy", "gt_known_loc_accuracy")
    )
    body = "".join(
        f"<tr><td>{html.escape(name)}{' *' if name in marked else ''}</td><td>{row['n']}</td>"
        + "".join(f"<td>{_fmt(row[k])}</td>" for k in ("accuracy", "mean_iou", "loc_accuracy", "gt_known_loc_accuracy"))
        + "</tr>"
        for name, row in rows.items()
    )
    return f"<table>{head}</tr>{body}</table>"


def _calibration_table(calibration: dict) -> str:
    rows = "".join(
        f"<tr><td>{b['low']:.1f}–{b['high']:.1f}</td><td>{b['n']}</td><td>{_fmt(b['score'])}</td>"
        f"<td>{_fmt(b['accuracy'])}</td></tr>"
        for b in calibration["bins"]
        if b["n"]
    )
    return f"<table><tr><th>score</th><th>images</th><th>mean score</th><th>accuracy</th></tr>{rows}</table>"


def _warnings(metrics: dict, errors: Sequence[dict], error_count: int) -> str:
    parts = []
    unknown = metrics.get("unknown_classes") or {}
    if unknown:
        names = ", ".join(f"<b>{html.escape(k)}</b> ({v})" for k, v in unknown.items())
        parts.append(
            f"<p>Ground-truth classes the model does not know: {names}. Their images count as wrong "
            "(marked * in the tables).</p>"
        )
    if error_count:
        items = "".join(
            f"<li><code>{html.escape(e['path'])}</code>: {html.escape(e['status'])}: {html.escape(e['detail'] or '')}</li>"
            for e in errors
        )
        more = f"<li>... and {error_count - len(errors)} more</li>" if error_count > len(errors) else ""
        parts.append(
            f"<p>{error_count} image(s) could not be scored and are left out of the numbers:</p><ul>{items}{more}</ul>"
        )
    return (
        f'<section id="warnings"><h2>Warnings</h2><div class="warn">{"".join(parts)}</div></section>' if parts else ""
    )


def _gallery(items: Sequence[Labelled]) -> str:
    figures = []
    for item in items:
        row = item.row
        try:
            picture = _img(drawn_image(item), f"{item.path} with its boxes", "worst")
        except ImageError as exc:  # the file changed since it was scored
            picture = f"<p>cannot show: {html.escape(str(exc))}</p>"
        figures.append(
            f"<figure>{picture}<figcaption><code>{html.escape(item.path)}</code><br>"
            f'<span class="gt">true {html.escape(item.record.label)}</span> · '
            f'<span class="pred">predicted {html.escape(str(row["label"]))} ({row["score"]:.2f})</span> · '
            f"IoU {row['iou']:.3f}</figcaption></figure>"
        )
    return "".join(figures)


def render(
    *, model: str, datasets: Sequence[str], metrics: dict, labelled: Sequence[Labelled], errors, error_count, worst_n=12
) -> str:
    """The whole report as one HTML string."""
    cards = "".join(
        f'<div class="card">{html.escape(name)}<b>{_fmt(metrics.get(key))}</b></div>'
        for key, name in METRIC_NAMES.items()
    )
    ece = (metrics.get("calibration") or {}).get("ece")
    cards += f'<div class="card">calibration error (ECE)<b>{_fmt(ece)}</b></div>'
    small, large = metrics.get("box_size_shares", (1 / 9, 4 / 9))
    sections = [
        f'<section id="summary"><h2>Summary</h2><p>{metrics["n"]} labelled image(s) scored.</p>'
        f'<div class="cards">{cards}</div></section>',
        _warnings(metrics, errors, error_count),
        '<section id="per-class"><h2>Per class</h2>'
        + _stats_table("class", metrics["per_class"], list(metrics.get("unknown_classes") or {}))
        + "</section>",
        '<section id="breakdown"><h2>Breakdown</h2>'
        + _stats_table("objects in the image", metrics.get("by_objects", {}))
        + _stats_table("target box size", metrics.get("by_box_size", {}))
        + f"<p>Box size: the target box's area as a share of the image: small &lt; {small:.3f} ≤ medium "
        f"&lt; {large:.3f} ≤ large (on average under a third, or at least two thirds, of each side).</p></section>",
        '<section id="confusion" class="plots"><h2>Confusion matrix</h2>'
        + _img(confusion_png(metrics), "confusion matrix", "plot")
        + "<p>Rows: true class; columns: predicted; colour: share of the row.</p></section>",
        '<section id="iou" class="plots"><h2>IoU histogram</h2>'
        + _img(iou_histogram_png(labelled), "IoU histogram", "plot")
        + "</section>",
        '<section id="calibration" class="plots"><h2>Score calibration</h2>'
        + _img(calibration_png(metrics["calibration"]), "reliability diagram", "plot")
        + "<p>Scores cut into ten bins; a calibrated model's accuracy in each bin equals its mean score.</p>"
        + _calibration_table(metrics["calibration"])
        + "</section>",
        f'<section id="worst"><h2>Worst {worst_n} images</h2><p>Wrong labels first, then the lowest IoU. '
        '<span class="gt">Green</span>: every ground-truth box; <span class="pred">red</span>: the predicted box.</p>'
        f'<div class="gallery">{_gallery(worst(labelled, worst_n))}</div></section>',
    ]
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>clsloc evaluation: {html.escape(model)}</title><style>{STYLE}</style></head><body>"
        f"<h1>clsloc evaluation: {html.escape(model)}</h1>"
        f'<p class="meta">datasets: {html.escape(", ".join(datasets) or "-")} · written {when}</p>'
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(path: str | Path, **parts) -> Path:
    """Render the report (see :func:`render` for ``parts``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(**parts), encoding="utf-8")
    return path
