"""RUN/report.html: the evaluation as one self-contained page (plots inline as base64 PNG, no external assets).

It opens with a verdict in plain words (on how many style features the twin is closer to the persona than its base
model, the furthest ones, and what to try next), then the fidelity measures one plain sentence each. Sections below:
training (loss curves from metrics.jsonl), facts, perplexity, style, distinguishability, memorisation and privacy,
blind A/B test, and sample conversations side by side (real | tuned | base) as chat bubbles, each bubble picking its
own text direction. Tables scroll sideways on a phone instead of widening the page. Written by `talkalike eval` from
eval.json; `write_report(run_dir, result)` re-renders it. A static file opened locally (serve does not serve it), so
its one inline stylesheet needs no Content-Security-Policy exception.
"""

import base64
import html
import io
import json
from pathlib import Path

from talkalike.evaluate.evaluate import MAX_PERPLEXITY_RATIO, MIN_FACTS, MIN_RANKING
from talkalike.evaluate.facts import ALONE
from talkalike.evaluate.metrics import GAP_MEASURES
from talkalike.files import read_jsonl, write_atomic
from talkalike.template import split_bubbles

SECTIONS = ("headline", "training", "facts", "perplexity", "style", "distinguishability", "memorisation", "ab-test",
            "samples")
COLOURS = {"real": "#25a55f", "tuned": "#3b6fd8", "base": "#9a9a9a"}  # the persona green, the twin blue, base grey
PLOT_FEATURES = ("message length", "messages per turn", "laughter", "language mix", "message ending", "capitalisation")
# Style gaps that sampling settings move without retraining: loops (repetition penalty) and reply length
# (temperature, top-p), so `tune-generation` is the cheaper thing to try first when one of them is furthest.
DECODING_GAPS = ("replies repeating a 3-word run", "messages per turn", "characters a message")
# metrics.jsonl keys drawn as loss curves, with their legend labels. Trainer's one final "train_loss" is the mean
# over the run, not a point on the curve, so it is left out.
LOSS_CURVES = {"loss": "training loss (per logged step)", "eval_loss": "held-out loss (eval set)"}

CSS = """
html { -webkit-text-size-adjust: 100%; }
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 16px; color: #1b1b1b;
       line-height: 1.4; }
h1 { margin-bottom: 0; font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
p, li { overflow-wrap: anywhere; }
.verdict { font-size: 1.15em; background: #f3f7ff; border-left: 4px solid #3b6fd8; padding: 8px 12px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.chat td { min-width: 11em; }
img { max-width: 100%; height: auto; } .note { color: #555; } .system { color: #555; font-style: italic; }
.bubble { display: block; width: fit-content; max-width: 100%; box-sizing: border-box; padding: 3px 8px; margin: 2px 0;
          border-radius: 7px; white-space: pre-wrap; unicode-bidi: plaintext; overflow-wrap: break-word; }
.user { background: #f1f1f1; } .real { background: #dcf8c6; } .tuned { background: #dde8fb; } .base { background: #eee; }
.leak { color: #b42318; font-weight: 600; } .safe { color: #1a7f37; font-weight: 600; }
@media (max-width: 600px) { body { padding: 8px; } td, th { padding: 3px 5px; } table.chat td { min-width: 9em; } }
"""


class Percent(float):
    """A share that the report writes as a percentage (a table cell holding one is right-aligned like a number)."""


def percent(value: float) -> str:
    """0.287 -> "29%"; a share under 1% keeps one decimal, so it does not read as none."""
    return f"{value:.1%}" if 0 < abs(value) < 0.01 else f"{value:.0%}"


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


def _bubbles(messages: list[str], kind: str, empty: str = "(no reply)") -> str:
    """Each message its own bubble; a message still holding the bubble separator is split at it, so the separator
    never shows. dir="auto" lets every bubble take the direction of its own first letter (Hebrew right-to-left)."""
    pieces = [piece for message in messages for piece in split_bubbles(message)]
    if not pieces:
        return f'<span class="note">{_esc(empty)}</span>'
    return "".join(f'<span class="bubble {kind}" dir="auto">{_esc(m)}</span>' for m in pieces)


def _table(header: list[str], rows: list[list], kind: str = "") -> str:
    """A table in a box that scrolls sideways when it is wider than the page. Numbers are formatted and right-aligned;
    strings are HTML already."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if isinstance(c, (int, float)) else f"<td>{c}</td>"
                         for c in row) + "</tr>" for row in rows)
    css = f' class="{kind}"' if kind else ""
    return f'<div class="scroll"><table{css}><tr>{head}</tr>{body}</table></div>'


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Percent):
        return percent(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


# --- the verdict ----------------------------------------------------------------------------------------------------


def _persona(result: dict) -> str:
    return result.get("persona") or result["run"]


def _closer_features(result: dict) -> tuple[int, int]:
    """(style features where the tuned replies are closer to the persona's than the base model's, all features)."""
    style = result["style"]
    tuned, base = style["sets"]["tuned"]["distance"], style["sets"]["base"]["distance"]
    return sum(tuned[f] < base[f] for f in style["features"]), len(style["features"])


def _gap(gap: dict) -> str:
    """One style gap as "Hebrew messages 3% vs 27%" (the twin's value first)."""
    fmt = GAP_MEASURES[gap["measure"]][2] if gap["measure"] in GAP_MEASURES else "{:.2f}".format
    return f"{gap['measure']} {fmt(gap['generated'])} vs {fmt(gap['persona'])}"


def training_info(run_dir: Path) -> dict:
    """run.json's dataset folder and epochs, for the commands the verdict suggests ({} without a run.json)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    info = json.loads(path.read_text(encoding="utf-8"))
    return {"dataset": info.get("dataset"), "epochs": (info.get("config") or {}).get("epochs")}


def suggestions(result: dict, training: dict | None = None) -> list[str]:
    """What to try next (HTML), the most pressing first: keep secrets in, train more when the twin learned little,
    tune sampling when the furthest gap is one sampling moves, recall more memories when facts are missed; with
    nothing weak, the blind test or a chat."""
    training = training or {}
    h, run, persona = result["headline"], _esc(result["run"]), _esc(_persona(result))
    tips = []
    if result["canaries"]["leaked"]:
        tips.append("keep personal data out of training: a planted secret came out, so rebuild the dataset without "
                    "<code>--no-privacy</code> and train again")
    closer, total = _closer_features(result)
    ppl, ranking = h["perplexity"], h.get("next-reply ranking")
    if (ppl["tuned"] > MAX_PERPLEXITY_RATIO * ppl["base"] or (ranking and ranking["tuned"] < MIN_RANKING)
            or 2 * closer < total):
        epochs = training.get("epochs")
        more = f"--epochs {epochs + 1:g}" if isinstance(epochs, (int, float)) else "--epochs 2"
        command = _esc(f"talkalike train {training.get('dataset') or 'DATASET'} {more}")
        turns = result["persona classification"]["trained on"]["persona turns"]
        tips.append(f"train longer (<code>{command}</code>) or add more chats: it learned from {turns:,} of "
                    f"{persona}'s turns")
    gaps = (result.get("style gaps") or {}).get("tuned") or []
    if gaps and (gaps[0]["measure"] in DECODING_GAPS or h["style distance"]["tuned"] > h["style distance"]["base"]):
        tips.append(f"<code>talkalike tune-generation {run}</code>: sampling settings change "
                    f"{_esc(gaps[0]['measure'])} without training again")
    facts = h.get("facts recalled")
    if facts and facts["tuned"] < MIN_FACTS:
        memories = (result.get("generation") or {}).get("memories") or 0
        tips.append(f"let it recall more of {persona}'s past exchanges: <code>talkalike chat {run} --memories "
                    f"{max(2 * memories, 3)}</code>")
    if not tips:
        if (result.get("ab") or {}).get("answers"):
            tips.append(f"chat with it: <code>talkalike chat {run}</code>")
        else:
            tips.append(f"ask friends to tell {persona} from the twin: <code>talkalike serve {run}</code>, then open "
                        "<code>/ab</code>")
    return tips[:3]


def verdict(result: dict, training: dict | None = None) -> str:
    """The opening paragraph (HTML): closer on how many features, the furthest ones, what to try next."""
    persona = _esc(_persona(result))
    closer, total = _closer_features(result)
    text = f"Closer to {persona} than the base model on <b>{closer} of {total}</b> style features."
    gaps = (result.get("style gaps") or {}).get("tuned") or []
    if gaps:
        text += (f" Furthest: {_esc(', '.join(_gap(g) for g in gaps[:2]))} (the twin vs {persona}).")
    text += " Try: " + "; ".join(suggestions(result, training)) + "."
    return f'<p class="verdict">{text}</p>'


def _measures(result: dict) -> str:
    """The headline fidelity measures, one plain sentence each."""
    h, persona = result["headline"], _esc(_persona(result))
    items = []
    if "next-reply ranking" in h:
        r = h["next-reply ranking"]
        items.append(f"<b>Follows the conversation:</b> shown {persona}'s real next reply among 10 candidates, the "
                     f"twin ranks it first {percent(r['tuned'])} of the time (base model {percent(r['base'])}, a blind "
                     f"guess {percent(r['chance'])}), over {r['n']:,} held-out turns.")
    if "context identification" in h:
        c = h["context identification"]
        items.append(f"<b>Answers what was said:</b> a twin reply points back to its own conversation among 10 in "
                     f"{percent(c['tuned'])} of cases; {persona}'s real replies do in {percent(c['real'])}, the base "
                     f"model's in {percent(c['base'])} (a blind guess 10%).")
    if "fooled rate at equal error" in h:
        f = h["fooled rate at equal error"]
        items.append(f"<b>Hard to tell apart:</b> a classifier trained to tell the twin's replies from {persona}'s "
                     f"is still wrong {percent(f['tuned'])} of the time (base model {percent(f['base'])}; 50% would "
                     "mean it cannot tell them apart at all).")
    if "facts recalled" in h:
        f = h["facts recalled"]
        items.append(f"<b>Knows {persona}'s life:</b> asked {f['facts']} questions about things {persona} wrote, "
                     f"the twin gets {percent(f['tuned'])} right in at least one of {f['samples']} tries (base model "
                     f"{percent(f['base'])} with the same recalled memories"
                     + (f", {percent(f[ALONE])} with none" if ALONE in f else "") + ").")
    ppl, style = h["perplexity"], h["style distance"]
    items.append(f"<b>Expects {persona}'s words:</b> perplexity on {persona}'s held-out replies {ppl['tuned']:.1f} "
                 f"vs {ppl['base']:.1f} for the base model (how surprised the model is by each word; lower is closer).")
    items.append(f"<b>Overall style distance:</b> {style['tuned']:.3f} vs {style['base']:.3f} for the base model "
                 "(the mean over the style features; 0 = the same habits, 1 = nothing in common).")
    return '<ul class="measures">' + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _headline(result: dict, training: dict) -> str:
    base = result.get("base") or {}
    h = result["headline"]
    rows = []
    if "next-reply ranking" in h:
        r = h["next-reply ranking"]
        rows.append([f"real next reply ranked first of 10 (R@1; chance {percent(r['chance'])})", Percent(r["tuned"]),
                     Percent(r["base"])])
    if "context identification" in h:
        c = h["context identification"]
        rows.append([f"reply picks out its own conversation among 10 (real replies: {percent(c['real'])})",
                     Percent(c["tuned"]), Percent(c["base"])])
    if "fooled rate at equal error" in h:
        f = h["fooled rate at equal error"]
        rows.append(["real-vs-generated classifier fooled at equal error (50% = cannot tell)", Percent(f["tuned"]),
                     Percent(f["base"])])
    if "facts recalled" in h:
        f = h["facts recalled"]
        rows.append([f"facts recalled (any of {f['samples']} replies)", Percent(f["tuned"]), Percent(f["base"])])
    rows += [
        ["perplexity of held-out persona replies (lower is closer)", h["perplexity"]["tuned"], h["perplexity"]["base"]],
        ["style distance to the persona (0 = identical)", h["style distance"]["tuned"], h["style distance"]["base"]],
    ]
    return (verdict(result, training) + _measures(result)
            + f"<p class=\"note\">Run <b>{_esc(result['run'])}</b>, base model {_esc(base.get('id', '?'))}, "
              f"{result['held-out turns']:,} held-out turns of {_esc(_persona(result))} never seen in training.</p>"
            + _table(["", "tuned", "base"], rows))


# --- the sections ---------------------------------------------------------------------------------------------------


def loss_curves(lines: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """metrics.jsonl rows -> {legend label: [(step, loss)]}, training loss first."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, line in enumerate(lines):
        for key, label in LOSS_CURVES.items():
            if isinstance(line.get(key), (int, float)):
                curves.setdefault(label, []).append((line.get("step", i), line[key]))
    return curves


def _training(run_dir: Path) -> str:
    path = Path(run_dir) / "metrics.jsonl"
    lines = read_jsonl(path) if path.is_file() else []
    curves = loss_curves(lines)
    if not curves:
        return '<p class="note">No loss values in metrics.jsonl.</p>'
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for (label, points), colour in zip(curves.items(), ("#3b6fd8", "#e07b00"), strict=False):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                markersize=4, label=label, color=colour)
    ax.set_title("Loss during training (lower = predicts the persona's replies better)", fontsize=10)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    last = {label: points[-1][1] for label, points in curves.items()}
    steps = max(p[0] for points in curves.values() for p in points)
    epochs = max((line["epoch"] for line in lines if isinstance(line.get("epoch"), (int, float))), default=None)
    summary = f"{steps:,} steps" + (f" ({epochs:g} epoch{'' if epochs == 1 else 's'})" if epochs is not None else "") + "; last " + \
        ", ".join(f"{label.split(' (')[0]} {value:.2f}" for label, value in last.items())
    return (_png(fig) + f'<p class="note">{_esc(summary)}. The training loss is measured on the batch just learned '
            "from; the held-out loss on conversations kept out of training. Held-out loss rising while training loss "
            "falls means the model is memorising rather than learning the style.</p>" + _preference(run_dir))


def _preference(run_dir: Path) -> str:
    """One sentence on the preference stage after the supervised passes (train/preference.py), from run.json."""
    path = Path(run_dir) / "run.json"
    report = json.loads(path.read_text(encoding="utf-8")).get("preference") if path.is_file() else None
    if not report:
        return ""
    if not report.get("pairs"):
        return f'<p class="note">Preference tuning: skipped ({_esc(report.get("skipped", "no pairs"))}).</p>'
    text = (f"Then preference tuning: {report['pairs']:,} pairs of the real reply against one from another "
            f"conversation, {report['steps']} steps")
    held = report.get("real reply preferred (held out)")
    if held:
        text += (f"; on {report['held-out pairs']} held-out pairs the real reply is now the likelier one "
                 f"{held['after']:.0%} of the time, against {held['before']:.0%} before")
    return f'<p class="note">{_esc(text)}.</p>'


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
    parts = ["<p>Each feature compares how often the replies fall into each kind (message lengths, laughter, "
             "language, …) with the persona's real replies: 0 = the same mix, 1 = nothing in common.</p>",
             _bars(style["features"], {m: [sets[m]["distance"][f] for f in style["features"]] for m in models},
                   "Jensen–Shannon distance to real", figsize=(9, 3.5), rotate=True)]
    parts.append(_table(["model", "style distance (mean over features)"] + style["features"],
                        [[m, sets[m]["style distance"]] + [sets[m]["distance"][f] for f in style["features"]]
                         for m in models]))
    keys = list(sets["real"]["summary"])
    parts.append(_table(["set"] + keys, [[name] + [Percent(sets[name]["summary"][k]) if "share" in k
                                                   else sets[name]["summary"][k] for k in keys] for name in sets]))
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
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    parts.append(_png(fig))
    overlap = [[m] + [Percent(v) for v in sets[m]["vocabulary overlap"].values()] for m in models]
    parts.append(_table(["model"] + list(sets[models[0]]["vocabulary overlap"]), overlap))
    return "".join(parts)


def _distinguishability(result: dict) -> str:
    rate = result["persona classification"]["rate"]
    fooled = result.get("fooled rate at equal error") or {}
    trained = result["persona classification"]["trained on"]
    parts = [
        f'<p>A character n-gram classifier trained on {trained["persona turns"]:,} persona turns and '
        f'{trained["other turns"]:,} turns of the other speakers (training set) labels each reply. '
        f'{_esc(result["persona classification"].get("note", ""))}</p>',
        _bars(list(rate), {"classified as persona": [100 * v for v in rate.values()]}, "% classified as persona"),
        _table(["set", "classified as persona"], [[k, Percent(v)] for k, v in rate.items()]),
        "<p>Real vs generated: cross-validated ROC AUC of a classifier telling the real held-out replies from "
        "generated ones (0.5 = indistinguishable, 1 = always told apart).</p>",
        _table(["model", "AUC", "fooled at equal error"],
               [[m, v, Percent(fooled[m]) if m in fooled else "-"] for m, v in result["real vs generated auc"].items()]),
    ]
    return "".join(parts)


def canary_rows(results: list[dict]) -> list[dict]:
    """The canary results grouped by the context they were prompted with: leak_check shares one set of replies per
    context among all the secrets checked there, so one row per context says it all."""
    groups: dict[str, dict] = {}
    for r in results:
        key = json.dumps([r["context"], r["training reply"], r["outputs"]], ensure_ascii=False)
        group = groups.setdefault(key, {"context": r["context"], "training reply": r["training reply"],
                                        "planted as": r["planted as"], "tries": r["tries"], "outputs": r["outputs"],
                                        "secrets": [], "leaked": []})
        group["secrets"].append(r["secret"])
        if r["leaked"]:
            group["leaked"].append(f"{r['secret']} ({r['leaks']} of {r['tries']})")
    return list(groups.values())


def _memorisation(result: dict) -> str:
    copies = result["memorisation"]
    canaries = result["canaries"]
    parts = ["<p>Share of replies sharing an 8-word or 40-character run with a training reply of the persona "
             "(real held-out replies give the level of ordinary repetition).</p>",
             _table(["set", "copy rate", "copies"], [[k, Percent(v["copy rate"]), v["copies"]]
                                                     for k, v in copies.items()])]
    state = "on" if canaries["pseudonymised"] else "off"
    verdict = (f'<span class="leak">leaked: {_esc(", ".join(canaries["leaked"]))}</span>' if canaries["leaked"]
               else '<span class="safe">no secret came out</span>')
    groups = canary_rows(canaries["results"])
    tries = groups[0]["tries"] if groups else 0
    parts.append(f"<p>Canary test (pseudonymisation {state}): the twin was prompted {tries} times with each of the "
                 f"{len(groups)} contexts where a secret was written in training, and each reply checked for "
                 f"{len(canaries.get('secrets') or [])} secrets; {verdict}.</p>")
    rows = [[_bubbles([g["context"]], "user", "(empty message)"), _bubbles([g["training reply"]], "real"),
             _esc(g["planted as"]), _esc(", ".join(g["secrets"])),
             f'<span class="leak">{_esc("; ".join(g["leaked"]))}</span>' if g["leaked"]
             else f'<span class="safe">none in {g["tries"]} replies</span>',
             _bubbles(g["outputs"][:2], "tuned")] for g in groups]
    if rows:
        parts.append(_table(["last message before", "training reply", "planted as", "secrets checked", "leaked",
                             "twin's replies (first two)"], rows, "chat"))
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
    parts = [f"<p><b>Fooled rate: {percent(ab['fooled rate'])}</b> ({ab['fooled']} of {ab['answers']} answers picked "
             f"the twin as the real one), Wilson 95% interval {percent(low)}–{percent(high)}. A coin flip would be "
             f"50%; the best published figure for a comparable tool is {reference['fooled']}/{reference['answers']}."
             "</p>"]
    parts.append(_table(["rater", "fooled", "answers"],
                        [[_esc(name), r["fooled"], r["answers"]] for name, r in ab.get("raters", {}).items()]))
    return "".join(parts)


def _context(messages: list[dict]) -> str:
    """The history before a reply: the system line as a note, each turn as bubbles."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f'<div class="system" dir="auto">{_esc(m["content"])}</div>')
        else:
            parts.append(_bubbles([m["content"]], "user" if m["role"] == "user" else "real", "(empty message)"))
    return "".join(parts)


def _samples(result: dict) -> str:
    rows = [[_context(sample["context"]), _bubbles(sample["real"], "real"), _bubbles(sample["tuned"], "tuned"),
             _bubbles(sample["base"], "base")] for sample in result["samples"]]
    return _table(["context (latest turns)", "real reply", "tuned", "base"], rows, "chat")


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
             f"<b>Tuned {percent(tuned['recalled'])}</b> (Wilson 95% {percent(low)}–{percent(high)}) vs base "
             f"{percent(base['recalled'])} of {tuned['facts']} facts, both with the same past exchanges recalled into "
             "the prompt"
             + (f"; the base with none recalled: {percent(facts[ALONE]['recalled'])}" if ALONE in facts else "")
             + ".</p>"]
    rows = [[f'<span dir="auto">{_esc(t["question"])}</span>',
             f'<span dir="auto">{_esc(", ".join(t["answers"]))}</span>',
             f'<span class="{"safe" if t["hit"] else "leak"}">{"yes" if t["hit"] else "no"}</span>',
             _bubbles(t["replies"][:1], "tuned"), "yes" if b["hit"] else "no"]
            for t, b in zip(tuned["results"], base["results"], strict=True)]
    parts.append(_table(["question", "answers", "tuned recalled", "tuned greedy reply", "base recalled"], rows, "chat"))
    return "".join(parts)


def _perplexity(result: dict) -> str:
    ppl = result["perplexity"]
    return ("<p>How surprised each model is, word by word, by the persona's real held-out replies: a perplexity of 10 "
            "means as unsure as choosing among 10 equally likely tokens. Lower is closer.</p>"
            + _bars(["perplexity"], {m: [ppl[m]["perplexity"]] for m in ("tuned", "base")}, "per-token perplexity",
                    figsize=(4, 3))
            + _table(["model", "perplexity", "nll per token", "tokens"],
                     [[m, ppl[m]["perplexity"], ppl[m]["nll per token"], ppl[m]["tokens"]] for m in ("tuned", "base")]))


def render(run_dir: Path, result: dict) -> str:
    """The whole report as one HTML string."""
    persona = _persona(result)
    titles = {
        "headline": (f"Does it sound like {persona}?", lambda: _headline(result, training_info(run_dir))),
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
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>talkalike eval · {_esc(result["run"])}</title><style>{CSS}</style></head><body>'
            f"<h1>How close is the twin to {_esc(persona)}?</h1>"
            f'<p class="note">talkalike evaluation of run {_esc(result["run"])}</p>{body}</body></html>\n')


def write_report(run_dir: Path, result: dict) -> Path:
    """Write RUN/report.html atomically."""
    return write_atomic(Path(run_dir) / "report.html", render(Path(run_dir), result))
