"""Self-contained HTML reports: one per evaluated run, a comparison page, caption cards.

Everything is inline: CSS in a <style> element, pictures as JPEG data URIs, charts as SVG;
no script, no font and no link leaves the file (every src/href is `data:` or `#`), so a
report opens offline and can be mailed as one file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from pipeline.infer.curves import cider_comparison_chart, training_charts
from pipeline.infer.gallery import Card, attention_uris, thumbnail_uri
from pipeline.infer.health import THRESHOLDS
from pipeline.infer.svg import series_colour
from pipeline.metrics.coco import DISPLAY_NAMES as DISPLAY
from pipeline.metrics.coco import METRIC_NAMES

GENERATOR = "captioner"
GALLERY_TITLES = {"best": "Best by CIDEr", "worst": "Worst by CIDEr", "random": "A random sample"}
HEALTH_ROWS = (  # (DecodeHealth field, label, how to show it)
    ("top_caption_share", "most frequent caption's share of images", "share"),
    ("distinct_share", "distinct captions", "share"),
    ("unfinished_share", "hit the max length without <eos>", "share"),
    ("repetition_share", "repeat a word or a bigram", "share"),
    ("length_ratio", "length, predictions / references", "ratio"),
)

CSS = """
:root{--ink:#1e293b;--muted:#64748b;--line:#e2e8f0;--bg:#f1f5f9;--card:#fff;--accent:#1d4ed8;
--bad:#b91c1c;--badbg:#fee2e2;--ok:#047857;--okbg:#dcfce7;--warnbg:#fef3c7;--warn:#b45309}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:var(--bg)}
header{background:#0f172a;color:#f8fafc;padding:22px 0 18px}
header .wrap,main{max-width:1200px;margin:0 auto;padding:0 28px}
header .kicker{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#94a3b8}
header h1{margin:2px 0 4px;font-size:28px;line-height:1.2;overflow-wrap:anywhere}
header .sub{color:#cbd5e1;font-size:14px}
nav{background:#1e293b;position:sticky;top:0;z-index:2}
nav .wrap{max-width:1200px;margin:0 auto;padding:0 28px;display:flex;gap:22px;flex-wrap:wrap}
nav a{color:#e2e8f0;text-decoration:none;font-size:14px;padding:9px 0;display:inline-block}
nav a:hover{color:#fff;text-decoration:underline}
section{margin-top:30px}
h2{font-size:21px;margin:0 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:22px 0 10px;color:#334155}
.muted{color:var(--muted)}
.stats{display:flex;gap:14px;flex-wrap:wrap;margin-bottom:16px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 18px;
min-width:150px}
.stat .value{font-size:30px;font-weight:700;line-height:1.15}
.stat .label{color:var(--muted);font-size:13px}
.stat.main .value{color:var(--accent)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px;
overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 10px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-size:13px;color:var(--muted);font-weight:600}
th:first-child,td:first-child,th.text{text-align:left}
td.text{text-align:left;white-space:normal;overflow-wrap:anywhere}
td.run{text-align:left}
tr.model td{font-weight:700}
tr:last-child td{border-bottom:none}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:5px 18px;margin:0;font-size:14px}
dl.prov dt{color:var(--muted)}
dl.prov dd{margin:0;overflow-wrap:anywhere}
code{font:13px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;background:#f1f5f9;padding:1px 4px;
border-radius:4px}
.pill{display:inline-block;border-radius:999px;padding:1px 10px;font-size:12px;font-weight:600}
.pill.ok{background:var(--okbg);color:var(--ok)}
.pill.bad{background:var(--badbg);color:var(--bad)}
tr.flag td{background:var(--badbg)}
tr.flag td:first-child{border-left:4px solid var(--bad)}
.note{background:var(--warnbg);border-left:4px solid var(--warn);padding:8px 14px;
border-radius:6px;margin:10px 0}
.alert{background:var(--badbg);border-left:4px solid var(--bad);padding:8px 14px;
border-radius:6px;margin:10px 0;font-weight:600;color:var(--bad)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px;
display:grid;grid-template-columns:200px minmax(0,1fr);gap:8px 16px;align-content:start}
.thumb{width:200px;height:200px;border-radius:6px;display:block;object-fit:cover}
.nothumb{width:200px;height:200px;border-radius:6px;background:#e2e8f0;color:var(--muted);
display:flex;align-items:center;justify-content:center;text-align:center;font-size:13px;padding:12px}
.card .name{font-size:12px;color:var(--muted);overflow-wrap:anywhere}
.card .pred{font-size:17px;font-weight:600;margin:2px 0 6px;overflow-wrap:anywhere}
.badge{display:inline-block;background:#dbeafe;color:var(--accent);border-radius:6px;
padding:0 8px;font-size:13px;font-weight:700}
.card ol{margin:8px 0 0;padding-left:20px;font-size:13px;color:#475569}
.card ol li{overflow-wrap:anywhere}
.strip{grid-column:1/-1;display:flex;flex-wrap:wrap;gap:6px;padding-top:8px;
border-top:1px dashed var(--line)}
.strip figure{margin:0;width:56px}
.strip img{width:56px;height:56px;display:block;border-radius:3px}
.strip figcaption{font-size:11px;text-align:center;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis;color:#334155}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:16px}
.charts .panel{padding:8px}
svg.chart{max-width:100%;height:auto;display:block}
svg .grid{stroke:#eef2f7}svg .axis{stroke:#94a3b8}
svg .tick{font-size:11px;fill:#64748b}svg .legend{font-size:12px;fill:#334155}
svg .chart-title{font-size:13px;font-weight:600;fill:#1e293b}
svg .chart-empty{font-size:13px;fill:#94a3b8}
svg .marker{stroke:#94a3b8;stroke-dasharray:4 3}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:8px;
vertical-align:-1px}
footer{color:var(--muted);font-size:12px;margin:36px 0 28px}
"""


def percent(value: float | None) -> str:
    """A 0-1 score shown x100 with one decimal ('n/a' when missing)."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def run_report(
    result: dict, sections: dict[str, list[Card]], history: list[dict], images_note: str | None
) -> str:
    """The report.html of one evaluated checkpoint (`result` is its metrics.json)."""
    title = f"{result['run']} on {result['split']}"
    subtitle = (
        f"epoch {result['epoch']} · {result['num_images']} images · "
        f"beam {result['beam_size']} · {result['language']} · "
        f"{result['tokenizer'].upper()} tokenizer"
    )
    gallery_links = [
        (f"#gallery-{key}", GALLERY_TITLES[key]) for key, cards in sections.items() if cards
    ]
    nav = [
        ("#scores", "Scores"),
        ("#health", "Decode health"),
        *gallery_links,
        ("#curves", "Training curves"),
        ("#provenance", "How these numbers were computed"),
    ]
    body = [
        scores_section(result),
        health_section(result["health"]),
        gallery_section(sections, images_note),
        curves_section(history, result["epoch"]),
        provenance_section(result),
    ]
    return page(title, subtitle, "evaluation report", nav, body)


def scores_section(result: dict) -> str:
    """Headline numbers and the model vs image-blind baseline table (x100)."""
    scores, baseline = result["scores"], result.get("baseline")
    base_scores = baseline["scores"] if baseline else {}
    cider, base_cider = scores.get("CIDEr"), base_scores.get("CIDEr")
    ratio = (
        f"{cider / base_cider:.2f}× the baseline"
        if cider is not None and base_cider
        else "no baseline"
    )
    stats = [
        ("CIDEr", percent(cider), ratio, True),
        ("baseline CIDEr", percent(base_cider), "image-blind", False),
        ("BLEU-4", percent(scores.get("Bleu_4")), "", False),
        ("METEOR", percent(scores.get("METEOR")), "", False),
        (f"{result['split']} loss", f"{result['loss']:.3f}", "per word", False),
    ]
    cards = "".join(
        f'<div class="stat{" main" if main else ""}"><div class="label">{escape(label)}</div>'
        f'<div class="value">{escape(value)}</div><div class="label">{escape(note)}</div></div>'
        for label, value, note, main in stats
    )
    header = "".join(f"<th>{DISPLAY[name]}</th>" for name in METRIC_NAMES)
    rows = [
        '<tr class="model"><td>model</td>'
        + "".join(f"<td>{percent(scores.get(n))}</td>" for n in METRIC_NAMES)
        + "</tr>"
    ]
    if baseline:
        rows.append(
            "<tr><td>image-blind baseline</td>"
            + "".join(f"<td>{percent(base_scores.get(n))}</td>" for n in METRIC_NAMES)
            + "</tr>"
        )
    blind = (
        f'<p class="muted">The baseline gives every image the most frequent training '
        f"caption, <q>{escape(baseline['caption'])}</q>: a model that does not look at "
        f"the images scores this.</p>"
        if baseline
        else '<p class="muted">No baseline: the caption file has no training captions.</p>'
    )
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in result.get("notes", []))
    return (
        f'<section id="scores"><h2>Scores <span class="muted">(×100, pycocoevalcap)'
        f'</span></h2><div class="stats">{cards}</div><div class="panel"><table>'
        f"<tr><th></th>{header}</tr>{''.join(rows)}</table></div>{blind}{notes}</section>"
    )


def health_section(health: dict) -> str:
    """Degeneracy checks with their thresholds; flagged rows in red."""
    limits = {}
    for check, limit, direction, _ in THRESHOLDS:
        limits.setdefault(check, []).append(
            ("≤ " if direction == "max" else "≥ ")
            + _show(limit, "share" if "share" in check else "ratio")
        )
    rows = []
    for key, label, kind in HEALTH_ROWS:
        flag = health["flags"].get(key)
        status = (
            f'<span class="pill bad">{escape(flag)}</span>'
            if flag
            else '<span class="pill ok">ok</span>'
        )
        rows.append(
            f"<tr{' class=flag' if flag else ''}><td>{escape(label)}</td>"
            f"<td>{_show(health[key], kind)}</td>"
            f'<td class="muted">{" and ".join(limits.get(key, []))}</td>'
            f'<td class="text">{status}</td></tr>'
        )
    rows.append(
        f"<tr><td>mean length, predictions vs references</td>"
        f"<td>{health['mean_length']:.1f} vs {health['mean_reference_length']:.1f}"
        f'</td><td class="muted">words</td><td></td></tr>'
    )
    rows.append(
        f"<tr><td>vocabulary used</td><td>{health['vocabulary_used']} of "
        f'{health["vocabulary_size"]}</td><td class="muted">'
        f"{health['vocabulary_used'] / max(health['vocabulary_size'], 1):.1%}</td>"
        "<td></td></tr>"
    )
    alert = ""
    if health["flags"]:
        alert = (
            f'<div class="alert">Decoding looks degenerate: '
            f"{escape('; '.join(health['flags'].values()))}.</div>"
        )
    repeated = "".join(
        f'<tr><td class="text">{escape(caption)}</td><td>{count}</td>'
        f"<td>{count / health['images']:.0%}</td></tr>"
        for caption, count in health["top_repeated"]
    )
    repeated_table = (
        f'<h3>Most repeated captions</h3><div class="panel"><table><tr>'
        f"<th>caption</th><th>images</th><th>share</th></tr>{repeated}"
        "</table></div>"
        if repeated
        else '<p class="muted">Every caption is different.</p>'
    )
    return (
        f'<section id="health"><h2>Decode health</h2>{alert}<div class="panel"><table>'
        f'<tr><th>check</th><th>value</th><th>healthy</th><th class="text">status</th></tr>'
        f"{''.join(rows)}</table></div>{repeated_table}</section>"
    )


def _show(value: float, kind: str) -> str:
    return f"{value:.0%}" if kind == "share" else f"{value:.2f}"


def gallery_section(sections: dict[str, list[Card]], images_note: str | None) -> str:
    """Best, worst and random cards, each group under its own heading."""
    note = f'<div class="note">{escape(images_note)}</div>' if images_note else ""
    groups = "".join(
        f'<h3 id="gallery-{key}">{GALLERY_TITLES[key]} <span class="muted">({len(cards)})'
        f'</span></h3><div class="gallery">{"".join(card_html(c) for c in cards)}</div>'
        for key, cards in sections.items()
        if cards
    )
    return f'<section id="gallery"><h2>Gallery</h2>{note}{groups}</section>'


def card_html(card: Card) -> str:
    """One image: thumbnail, caption, CIDEr, references, then the attention strip."""
    thumb = thumbnail_uri(card)
    picture = (
        f'<img class="thumb" src="{thumb}" alt="{escape(card.name)}">'
        if thumb
        else '<div class="nothumb">image not found:<br>attention shown on grey</div>'
    )
    cider = (
        f'<span class="badge">CIDEr {percent(card.cider)}</span>' if card.cider is not None else ""
    )
    references = (
        "<ol>" + "".join(f"<li>{escape(r)}</li>" for r in card.references) + "</ol>"
        if card.references
        else ""
    )
    tiles = "".join(
        f'<figure><img src="{uri}" alt="attention for {escape(word)}">'
        f'<figcaption title="{escape(word)}">{escape(word)}</figcaption></figure>'
        for uri, word in zip(attention_uris(card), card.words, strict=True)
    )
    strip = (
        f'<div class="strip">{tiles}</div>'
        if tiles
        else '<div class="strip muted">empty caption: no attention</div>'
    )
    return (
        f'<div class="card">{picture}<div><div class="name">{escape(card.name)}</div>'
        f'<div class="pred">{escape(card.caption) or "<em>(empty)</em>"}</div>{cider}'
        f"{references}</div>{strip}</div>"
    )


def curves_section(history: list[dict], epoch: int | None) -> str:
    """Loss, val scores and learning rate per epoch from metrics.jsonl."""
    if not history:
        body = '<p class="muted">No metrics.jsonl beside the checkpoint: no curves.</p>'
    else:
        body = (
            '<div class="charts">'
            + "".join(f'<div class="panel">{svg}</div>' for svg in training_charts(history, epoch))
            + "</div>"
        )
    return f'<section id="curves"><h2>Training curves</h2>{body}</section>'


# metrics.json "tokenizer" (MetricReport.tokenizer) -> what the provenance table says
SCORING_TOKENIZERS = {
    "ptb": "PTBTokenizer (pycocoevalcap, Java)",
    "simple": "simple Python stand-in for PTBTokenizer: nltk's Treebank tokenizer (no Java)",
    "words": "the run's own word tokens (not English: no PTB, no METEOR)",
    "characters": "the run's own character tokens (no PTB, no METEOR)",
}


def provenance_section(result: dict) -> str:
    """How the numbers were computed: split, references, decoding, scorer, checkpoint, cache."""
    refs, decoding = result["references_per_image"], result["decoding"]
    beam = f"{decoding['beam_size']}"
    if decoding["effective_beam_size"] != decoding["beam_size"]:
        beam += f" (capped at {decoding['effective_beam_size']}, the emittable vocabulary)"
    fingerprint = ", ".join(f"{k}={v}" for k, v in result["feature_fingerprint"].items())
    items = [
        ("split", f"{result['split']}: {result['num_images']} images"),
        (
            "references per image",
            f"{refs['mean']:.2f} on average (min {refs['min']}, "
            f"max {refs['max']}); every image is scored against all",
        ),
        (
            "decoding",
            f"beam {beam}, length penalty {decoding['length_penalty']}, at most "
            f"{decoding['max_len']} words"
            + (", <unk> never emitted" if decoding["suppress_unk"] else ""),
        ),
        ("language", f"{result['language']} (data.language)"),
        ("vocabulary tokenizer", f"{result['vocab_tokenizer']} (vocab.tokenizer)"),
        ("scoring tokenizer", SCORING_TOKENIZERS.get(result["tokenizer"], result["tokenizer"])),
        (
            "scorer",
            f"pycocoevalcap {result['pycocoevalcap']}: Bleu(4), Meteor, Rouge, Cider, "
            "as COCOEvalCap.evaluate; shown ×100",
        ),
        ("checkpoint", f"{result['checkpoint']} (epoch {result['epoch']})"),
        ("feature file", result["features"]),
        ("feature fingerprint", fingerprint),
        ("baseline", "the most frequent training caption, for every image of the split"),
    ]
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items)
    return (
        f'<section id="provenance"><h2>How these numbers were computed</h2>'
        f'<div class="panel"><dl class="prov">{rows}</dl></div></section>'
    )


def comparison_report(results: list[dict], histories: dict[str, list[dict]]) -> str:
    """Several runs: the table ranked by CIDEr, and their val CIDEr curves on one chart."""
    ranked = sorted(results, key=lambda r: -(r["scores"].get("CIDEr") or -1.0))
    colour = {run: series_colour(i) for i, run in enumerate(histories)}
    header = (
        "<tr><th>#</th><th>run</th><th>epoch</th><th>split</th><th>beam</th>"
        "<th>images</th>"
        + "".join(f"<th>{DISPLAY[n]}</th>" for n in METRIC_NAMES)
        + "<th>baseline CIDEr</th><th>loss</th><th>health</th></tr>"
    )
    rows = []
    for rank, r in enumerate(ranked, 1):
        baseline = (r.get("baseline") or {}).get("scores", {})
        flags = r["health"]["flags"]
        health = (
            f'<span class="pill bad">{len(flags)} flag{"s" * (len(flags) > 1)}</span>'
            if flags
            else '<span class="pill ok">ok</span>'
        )
        swatch = f'<span class="swatch" style="background:{colour.get(r["run"], "#ccc")}"></span>'
        rows.append(
            f'<tr><td>{rank}</td><td class="run">{swatch}{escape(r["run"])}</td>'
            f"<td>{r['epoch']}</td><td>{escape(r['split'])}</td><td>{r['beam_size']}"
            f"</td><td>{r['num_images']}</td>"
            + "".join(f"<td>{percent(r['scores'].get(n))}</td>" for n in METRIC_NAMES)
            + f"<td>{percent(baseline.get('CIDEr'))}</td><td>{r['loss']:.3f}</td>"
            f"<td>{health}</td></tr>"
        )
    body = [
        f'<section id="ranking"><h2>Ranked by CIDEr <span class="muted">(×100)</span></h2>'
        f'<div class="panel"><table>{header}{"".join(rows)}</table></div>'
        '<p class="muted">Each run has its own report.html in its folder beside this '
        "page.</p></section>",
        f'<section id="curves"><h2>Validation CIDEr per epoch</h2><div class="charts">'
        f'<div class="panel">{cider_comparison_chart(histories)}</div></div></section>',
    ]
    title = f"{len(results)} runs compared"
    subtitle = f"{results[0]['split']} split · {results[0]['num_images']} images"
    return page(
        title,
        subtitle,
        "comparison",
        [("#ranking", "Ranking"), ("#curves", "Val CIDEr curves")],
        body,
    )


def caption_report(
    cards: list[Card], checkpoint: str, beam_size: int, captioned: int | None = None
) -> str:
    """`caption --html`: one card per new image (thumbnail, caption, attention strip);
    `captioned` > len(cards): the cards are a sample of that many captioned images."""
    body = [
        f'<section id="captions"><h2>Captions</h2><div class="gallery">'
        f"{''.join(card_html(c) for c in cards)}</div></section>"
    ]
    shown = f"{len(cards)} images"
    if captioned is not None and captioned > len(cards):
        shown = f"a sample of {len(cards)} of the {captioned:,} images captioned"
    subtitle = f"{shown} · {checkpoint} · beam {beam_size}"
    return page("Captions for new images", subtitle, "captions", [("#captions", "Captions")], body)


def page(title: str, subtitle: str, kind: str, nav: list[tuple[str, str]], body: list[str]) -> str:
    """The whole HTML document around `body` sections."""
    links = "".join(f'<a href="{href}">{escape(label)}</a>' for href, label in nav)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="{GENERATOR}"><title>{escape(title)}</title>'
        f'<style>{CSS}</style></head><body><header><div class="wrap">'
        f'<div class="kicker">captioner · {escape(kind)}</div><h1>{escape(title)}</h1>'
        f'<div class="sub">{escape(subtitle)}</div></div></header>'
        f'<nav><div class="wrap">{links}</div></nav><main>{"".join(body)}'
        f"<footer>Written by captioner on {stamp}. A single file: styles, pictures and "
        f"charts are embedded.</footer></main></body></html>\n"
    )
