"""RUN/report.html: the evaluation as one self-contained page (plots inline as base64 PNG, no external assets).

Sections: headline, training (loss curves from metrics.jsonl), perplexity, style, distinguishability,
memorisation and privacy, blind A/B test, and sample conversations side by side (real | tuned | base), right-to-left
aware. Written by `talkalike eval` from eval.json; `write_report(run_dir, result)` re-renders it.
"""

import base64
import html
import io
from pathlib import Path

from talkalike.files import read_jsonl, write_atomic
from talkalike.template import split_bubbles

SECTIONS = ("headline", "training", "facts", "perplexity", "style", "distinguishability", "memorisation", "ab-test",
            "samples")
COLOURS = {"real": "#25a55f", "tuned": "#3b6fd8", "base": "#9a9a9a"}  # the persona green, the twin blue, base grey
PLOT_FEATURES = ("message length", "messages per turn", "laughter", "language mix", "message ending", "capitalisation")

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 16px; color: #1b1b1b; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #555; } .better { color: #1a7f37; font-weight: 600; }
.bubble { display: block; width: fit-content; max-width: 100%; padding: 3px 8px; margin: 2px 0; border-radius: 7px;
          white-space: pre-wrap; unicode-bidi: plaintext; }
.user { background: #f1f1f1; } .real { background: #dcf8c6; } .tuned { background: #dde8fb; } .base { background: #eee; }
.leak { color: #b42318; font-weight: 600; } .safe { color: #1a7f37; font-weight: 600; }
"""


def _png(fig) -> str:
    """A matplotlib figure as an inline <img> (base64 PNG), closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    return plt


def _esc(value) -> str:
    return html.escape(str(value))


def _bubbles(messages: list[str], kind: str) -> str:
    if not messages:
        return '<span class="note">(no reply)</span>'
    return "".join(f'<span class="bubble {kind}" dir="auto">{_esc(m)}</span>' for m in messages)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if isinstance(c, (int, float)) else f"<td>{c}</td>"
                         for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def _training(run_dir: Path) -> str:
    path = Path(run_dir) / "metrics.jsonl"
    lines = read_jsonl(path) if path.is_file() else []
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, line in enumerate(lines):
        step = line.get("step", i)
        for key, value in line.items():
            if "loss" in key and isinstance(value, (int, float)):
                curves.setdefault(key, []).append((step, value))
    if not curves:
        return '<p class="note">No loss values in metrics.jsonl.</p>'
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key, points in sorted(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                markersize=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _bars(groups: list[str], series: dict[str, list[float]], ylabel: str, figsize=(7, 3.2), rotate=False) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name,
               color=COLOURS.get(name, None))
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _style(result: dict) -> str:
    style = result["style"]
    sets = style["sets"]
    models = [m for m in ("tuned", "base") if m in sets]
    parts = [_bars(style["features"], {m: [sets[m]["distance"][f] for f in style["features"]] for m in models},
                   "Jensen–Shannon distance to real", figsize=(9, 3.5), rotate=True)]
    parts.append(_table(["model", "style distance (mean over features)"] + style["features"],
                        [[m, sets[m]["style distance"]] + [sets[m]["distance"][f] for f in style["features"]]
                         for m in models]))
    keys = list(sets["real"]["summary"])
    parts.append(_table(["set"] + keys, [[name] + [sets[name]["summary"][k] for k in keys] for name in sets]))
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, feature in zip(axes.flat, PLOT_FEATURES, strict=True):
        categories = sorted({c for name in sets for c in sets[name]["distributions"][feature]},
                            key=lambda c: -sets["real"]["distributions"][feature].get(c, 0))[:8]
        width = 0.8 / len(sets)
        for k, name in enumerate(sets):
            dist = sets[name]["distributions"][feature]
            ax.bar([i + k * width for i in range(len(categories))], [dist.get(c, 0) for c in categories], width,
                   label=name, color=COLOURS.get(name))
        ax.set_xticks([i + width for i in range(len(categories))])
        # Hebrew category names render left-to-right in matplotlib; the legend and axes stay readable regardless.
        ax.set_xticklabels(categories, rotation=35, ha="right", fontsize=8)
        ax.set_title(feature, fontsize=10)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    parts.append(_png(fig))
    overlap = [[m] + list(sets[m]["vocabulary overlap"].values()) for m in models]
    parts.append(_table(["model"] + list(sets[models[0]]["vocabulary overlap"]), overlap))
    return "".join(parts)


def _distinguishability(result: dict) -> str:
    rate = result["persona classification"]["rate"]
    trained = result["persona classification"]["trained on"]
    parts = [
        f'<p>A character n-gram classifier trained on {trained["persona turns"]:,} persona turns and '
        f'{trained["other turns"]:,} turns of the other speakers (training set) labels each reply. '
        f'{_esc(result["persona classification"].get("note", ""))}</p>',
        _bars(list(rate), {"classified as persona": list(rate.values())}, "share classified as persona"),
        _table(["set", "classified as persona"], [[k, v] for k, v in rate.items()]),
        "<p>Real vs generated: cross-validated ROC AUC of a classifier telling the real held-out replies from "
        "generated ones (0.5 = indistinguishable, 1 = always told apart).</p>",
        _table(["model", "AUC", "fooled at equal error"],
               [[m, v, (result.get("fooled rate at equal error") or {}).get(m, "-")]
                for m, v in result["real vs generated auc"].items()]),
    ]
    return "".join(parts)


def _memorisation(result: dict) -> str:
    copies = result["memorisation"]
    canaries = result["canaries"]
    parts = ["<p>Share of replies sharing an 8-word or 40-character run with a training reply of the persona "
             "(real held-out replies give the level of ordinary repetition).</p>",
             _table(["set", "copy rate", "copies"], [[k, v["copy rate"], v["copies"]] for k, v in copies.items()])]
    state = "on" if canaries["pseudonymised"] else "off"
    verdict = (f'<span class="leak">leaked: {_esc(", ".join(canaries["leaked"]))}</span>' if canaries["leaked"]
               else '<span class="safe">no secret came out</span>')
    parts.append(f"<p>Canary test (pseudonymisation {state}): {len(canaries['results'])} prompts with the contexts "
                 f"where a secret was written in training; {verdict}.</p>")
    rows = [[_esc(r["secret"]), _esc(r["planted as"]), f'<span dir="auto">{_esc(r["training reply"])}</span>',
             f'<span class="{"leak" if r["leaked"] else "safe"}">{r["leaks"]}/{r["tries"]}</span>',
             _bubbles(r["outputs"][:2], "tuned")] for r in canaries["results"]]
    if rows:
        parts.append(_table(["secret", "planted as", "training reply", "leaks", "outputs (first two)"], rows))
    return "".join(parts)


def _ab(result: dict) -> str:
    ab = result.get("ab") or {}
    reference = ab.get("reference", {"fooled": 2, "answers": 20})
    if not ab.get("answers"):
        return ("<p>No answers yet. Run <code>talkalike serve RUN</code> and send friends to <code>/ab</code>: they see "
                "a held-out context and two replies, the real one and the twin's, and pick the real one. "
                f"The best published figure for a comparable tool is {reference['fooled']} friends fooled out of "
                f"{reference['answers']}.</p>")
    low, high = ab["wilson 95%"]
    parts = [f"<p><b>Fooled rate: {ab['fooled rate']:.0%}</b> ({ab['fooled']} of {ab['answers']} answers picked the "
             f"twin as the real one), Wilson 95% interval {low:.0%}–{high:.0%}. A coin flip would be 50%; the best "
             f"published figure for a comparable tool is {reference['fooled']}/{reference['answers']}.</p>"]
    parts.append(_table(["rater", "fooled", "answers"],
                        [[_esc(name), r["fooled"], r["answers"]] for name, r in ab.get("raters", {}).items()]))
    return "".join(parts)


def _samples(result: dict) -> str:
    rows = []
    for sample in result["samples"]:
        context = "".join(_bubbles(split_bubbles(m["content"]), "user" if m["role"] == "user" else "real")
                          for m in sample["context"])
        rows.append([context, _bubbles(sample["real"], "real"), _bubbles(sample["tuned"], "tuned"),
                     _bubbles(sample["base"], "base")])
    return _table(["context (latest turns)", "real reply", "tuned", "base"], rows)


def _headline(result: dict) -> str:
    from talkalike.evaluate.evaluate import headline_lines

    base = result.get("base") or {}
    h = result["headline"]
    rows = []
    if "next-reply ranking" in h:
        r = h["next-reply ranking"]
        rows.append([f"real next reply ranked first of 10 (R@1; chance {r['chance']:.0%})", r["tuned"], r["base"]])
    if "fooled rate at equal error" in h:
        f = h["fooled rate at equal error"]
        rows.append(["real-vs-generated classifier fooled at equal error (0.5 = cannot tell)", f["tuned"], f["base"]])
    if "facts recalled" in h:
        f = h["facts recalled"]
        rows.append([f"facts recalled (any of {f['samples']} replies)", f["tuned"], f["base"]])
    rows += [
        ["perplexity of held-out persona replies (lower is closer)", h["perplexity"]["tuned"], h["perplexity"]["base"]],
        ["style distance to the persona (0 = identical)", h["style distance"]["tuned"], h["style distance"]["base"]],
    ]
    # the readable lines first (they name the style features furthest from the persona), the numbers below
    return (f"<p>Run <b>{_esc(result['run'])}</b>, base model {_esc(base.get('id', '?'))}, "
            f"{result['held-out turns']:,} held-out persona turns never seen in training.</p>"
            + "<ul>" + "".join(f'<li dir="auto">{_esc(line)}</li>' for line in headline_lines(result)) + "</ul>"
            + _table(["", "tuned", "base"], rows))


def _facts(result: dict) -> str:
    facts = result.get("facts")
    if not facts:
        return ('<p class="note">No facts probe: pass <code>talkalike eval RUN --facts FILE</code> (JSONL, one '
                '<code>{"question", "answers", "topic"}</code> a line) or build the dataset with '
                "<code>--facts</code>.</p>")
    tuned, base = facts["tuned"], facts["base"]
    low, high = tuned["interval"]
    parts = [f"<p>Each question from {_esc(Path(facts['file']).name)} is sent as the other person's message; a fact "
             f"is recalled when any of {tuned['samples']} replies (one greedy, the rest sampled) contains an answer. "
             f"<b>Tuned {tuned['recalled']:.0%}</b> (Wilson 95% {low:.0%}–{high:.0%}) vs base {base['recalled']:.0%} "
             f"of {tuned['facts']} facts.</p>"]
    rows = [[f'<span dir="auto">{_esc(t["question"])}</span>',
             f'<span dir="auto">{_esc(", ".join(t["answers"]))}</span>',
             f'<span class="{"safe" if t["hit"] else "leak"}">{"yes" if t["hit"] else "no"}</span>',
             _bubbles(t["replies"][:1], "tuned"), "yes" if b["hit"] else "no"]
            for t, b in zip(tuned["results"], base["results"], strict=True)]
    parts.append(_table(["question", "answers", "tuned recalled", "tuned greedy reply", "base recalled"], rows))
    return "".join(parts)


def _perplexity(result: dict) -> str:
    ppl = result["perplexity"]
    return (_bars(["perplexity"], {m: [ppl[m]["perplexity"]] for m in ("tuned", "base")}, "per-token perplexity",
                  figsize=(4, 3))
            + _table(["model", "perplexity", "nll per token", "tokens"],
                     [[m, ppl[m]["perplexity"], ppl[m]["nll per token"], ppl[m]["tokens"]] for m in ("tuned", "base")]))


def render(run_dir: Path, result: dict) -> str:
    """The whole report as one HTML string."""
    titles = {
        "headline": ("Does it sound like the persona?", lambda: _headline(result)),
        "training": ("Training", lambda: _training(run_dir)),
        "facts": ("Facts the twin knows", lambda: _facts(result)),
        "perplexity": ("Perplexity", lambda: _perplexity(result)),
        "style": ("Style fidelity", lambda: _style(result)),
        "distinguishability": ("Distinguishability", lambda: _distinguishability(result)),
        "memorisation": ("Memorisation and privacy", lambda: _memorisation(result)),
        "ab-test": ("Blind A/B test", lambda: _ab(result)),
        "samples": ("Sample conversations", lambda: _samples(result)),
    }
    body = "".join(f'<section id="{key}"><h2>{_esc(titles[key][0])}</h2>{titles[key][1]()}</section>'
                   for key in SECTIONS)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>talkalike eval · '
            f'{_esc(result["run"])}</title><style>{CSS}</style></head><body><h1>talkalike evaluation</h1>'
            f"{body}</body></html>\n")


def write_report(run_dir: Path, result: dict) -> Path:
    """Write RUN/report.html atomically."""
    return write_atomic(Path(run_dir) / "report.html", render(Path(run_dir), result))
