"""Parse-speed benchmark: talkalike's WhatsApp parser side by side with whatstk, chat-miner and npm whatsapp-chat-parser.

Generates exports of N messages (Android/iOS, 12h/24h; multi-line messages, emoji with ZWJ, Hebrew, media, deleted,
edited and system lines), then times each parser in a fresh process (parse time in-process, peak RSS of the process)
and checks each one's message count against the generator's truth.

Setup (peers live in .bench/, git-ignored, never in pyproject):
    python3 -m venv .bench/venv && .bench/venv/bin/pip install whatstk chat-miner
    (cd .bench && npm install whatsapp-chat-parser@4.0.2)
Run:
    nice .venv/bin/python benchmarks/parse_whatsapp.py --n 1000000 --shapes android ios android12 ios12
    nice .venv/bin/python benchmarks/parse_whatsapp.py --n 1000000 --only talkalike whatsapp-chat-parser --repeat 3
    .venv/bin/python benchmarks/parse_whatsapp.py --generate-only --n 1000 --shapes ios   # just write the files
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
LRM = "\u200e"

SHAPES = {  # header templates; fields as in talkalike.sources.whatsapp.STYLES
    "android": ("{d:02}/{m:02}/{Y}, {H:02}:{M:02} - ", False),
    "android12": ("{d:02}/{m:02}/{Y}, {h}:{M:02}\u202f{p} - ", False),
    "ios": ("[{d:02}/{m:02}/{Y}, {H:02}:{M:02}:{S:02}] ", True),
    "ios12": ("[{d:02}/{m:02}/{Y}, {h}:{M:02}:{S:02}\u202f{P}] ", True),
}
NAMES = ["Maya", "דנה כהן", "Yossi 🚀", "~\u202fNoa", "\u202a+972 50-123-4567\u202c", "Avi", "👩\u200d💻 Tal"]
EN = ["ok", "see you at 8: bring snacks", "haha 😂😂", "Where are you?", "on my way 🚗", "lol", "sounds good 👍🏽",
      "did you see the game last night?", "I'll call you later", "👨\u200d👩\u200d👧\u200d👦 family dinner on friday"]
HE = ["מה קורה?", "אני בדרך", "סבבה 👌", "נדבר אחר כך", "תודה רבה!", "איפה אתה?", "חחחח", "יום הולדת שמח 🎉"]


def generate(path: Path, n: int, shape: str, seed: int = 0) -> dict:
    """Write an export of n entries to path; returns the truth: entries, authored entries, multi-line entries."""
    rnd = random.Random(seed)
    template, ios = SHAPES[shape]
    fmt = template.format
    t = datetime(2019, 1, 1, 8, 0, 0)
    authored = multiline = 0
    out = []
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            t += timedelta(seconds=rnd.choice((5, 30, 60, 120, 600, 3600)))
            header = fmt(d=t.day, m=t.month, Y=t.year, H=t.hour, h=t.hour % 12 or 12, M=t.minute, S=t.second,
                         p="am" if t.hour < 12 else "pm", P="AM" if t.hour < 12 else "PM")
            r = rnd.random()
            name = rnd.choice(NAMES)
            if r < 0.02:  # system: author-less on Android, attributed to the group with LRM on iOS
                text = rnd.choice(["Avi added Maya", "Messages and calls are end-to-end encrypted. Only people in this "
                                   "chat can read, listen to, or share them. Learn more.", "Noa left"])
                line = f"{header}Family 🏠: {LRM}{text}" if ios else f"{header}{text}"
                authored += ios
            elif r < 0.09:  # media
                line = (f"{LRM}{header}{name}: {LRM}image omitted" if ios else f"{header}{name}: <Media omitted>")
                authored += 1
            elif r < 0.10:
                line = f"{header}{name}: {LRM + 'This message was deleted.' if ios else 'This message was deleted'}"
                authored += 1
            else:
                lines = [rnd.choice(HE if rnd.random() < 0.45 else EN) for _ in range(rnd.choice((1,) * 33 + (2, 3, 5)))]
                if len(lines) > 2 and rnd.random() < 0.3:
                    lines[1] = ""  # a blank line inside a message
                if len(lines) > 1:
                    multiline += 1
                text = "\n".join(lines)
                if rnd.random() < 0.02:
                    text += " <This message was edited>"
                line = f"{header}{name}: {text}"
                authored += 1
            out.append(line)
            if len(out) >= 10_000:
                f.write("\n".join(out) + "\n")
                out.clear()
        if out:
            f.write("\n".join(out) + "\n")
    truth = {"entries": n, "authored": authored, "multiline": multiline}
    path.with_suffix(".counts.json").write_text(json.dumps(truth))
    return truth


# --- one parser per fresh process; each prints {"rows": ..., "parse_s": ...} on its last line -------------------

OURS = """
import json, sys, time
from talkalike.sources import read_export
t0, c0 = time.perf_counter(), time.process_time()
r = read_export(sys.argv[1])  # the product's own path, as `talkalike import` takes it: bytes, UTF-8 decode, parse
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"rows": len(r.messages), "parse_s": dt, "cpu_s": cpu, "multiline": sum(1 for m in r.messages if "\\n" in m.text)}))
"""
WHATSTK = """
import json, sys, time, logging
from whatstk import df_from_whatsapp
t0, c0 = time.perf_counter(), time.process_time()
df = df_from_whatsapp(sys.argv[1], max_size=None)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"rows": len(df), "parse_s": dt, "cpu_s": cpu, "multiline": int(df["message"].str.contains("\\n").sum())}))
"""
CHATMINER = """
import json, sys, time, logging
logging.disable(logging.CRITICAL)
from chatminer.chatparsers import WhatsAppParser
t0, c0 = time.perf_counter(), time.process_time()
p = WhatsAppParser(sys.argv[1])
p.parse_file()
df = p.parsed_messages.get_df(as_pandas=True)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"rows": len(df), "parse_s": dt, "cpu_s": cpu, "multiline": int(df["message"].str.contains("\\n").sum())}))
"""
NODE = """
const fs = require("fs");
const { parseString } = require("whatsapp-chat-parser");
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
const text = fs.readFileSync(process.argv[2], "utf8");
const msgs = parseString(text);
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
const c = process.cpuUsage(c0);
const cpu = (c.user + c.system) / 1e6;
const multiline = msgs.filter(m => m.message.trimEnd().includes("\\n")).length;
console.log(JSON.stringify({rows: msgs.length, parse_s: dt, cpu_s: cpu, multiline}));
"""


def _peers() -> dict:
    venv_py = BENCH / "venv" / "bin" / "python"
    peers = {"talkalike": ([sys.executable, "-c", OURS], "entries")}
    if venv_py.exists():
        peers["whatstk"] = ([str(venv_py), "-c", WHATSTK], "authored")
        peers["chat-miner"] = ([str(venv_py), "-c", CHATMINER], "authored")
    if (BENCH / "node_modules" / "whatsapp-chat-parser").exists():
        (BENCH / "bench_node.js").write_text(NODE)
        peers["whatsapp-chat-parser"] = (["node", "--max-old-space-size=16000", str(BENCH / "bench_node.js")], "entries")
    return peers


def run_one(cmd: list[str], path: Path) -> dict:
    """Run one parser on path in a fresh process; parse time from inside, wall time and peak RSS from outside."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd, str(path)], capture_output=True, text=True,
                          cwd=BENCH if "node" in cmd[0] else ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["peak_mib"] = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", type=Path, default=BENCH / "data")
    ap.add_argument("--only", nargs="+", help="run only these parsers")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each parser this many times, interleaved, and keep its least-CPU run (a shared machine's "
                         "load swings single runs by 30%%)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    peers = _peers()
    rows = []
    for shape in args.shapes:
        path = args.out / f"{shape}_{args.n}.txt"
        counts = path.with_suffix(".counts.json")
        truth = json.loads(counts.read_text()) if path.exists() and counts.exists() else generate(path, args.n, shape)
        if args.generate_only:
            print(path, truth)
            continue
        chosen = [(name, cmd, key) for name, (cmd, key) in peers.items() if not args.only or name in args.only]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in chosen}
        for _ in range(args.repeat):  # interleaved, so every parser meets the same spread of load
            for name, cmd, _ in chosen:
                runs[name].append(run_one(cmd, path))
        for name, _, expect_key in chosen:
            ok = [r for r in runs[name] if "error" not in r]
            r = min(ok, key=lambda r: r["cpu_s"]) if ok else runs[name][0]
            expected = truth[expect_key]
            if "error" in r:
                rows.append((name, path.name, "error: " + r["error"][:60], "", "", "", "", "", ""))
            else:
                rows.append((name, path.name, f"{r['rows']:,}", "yes" if r["rows"] == expected else f"NO ({expected:,})",
                             f"{r['multiline']:,}/{truth['multiline']:,}", f"{r['parse_s']:.2f}", f"{r['cpu_s']:.2f}",
                             f"{r['rows'] / r['cpu_s']:,.0f}", f"{r['peak_mib']:,.0f}"))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    if rows:
        head = ("parser", "file", "rows", "right count", "multi-line kept", "parse wall s", "parse CPU s",
                "msgs/s (CPU)", "peak RSS MiB")
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
