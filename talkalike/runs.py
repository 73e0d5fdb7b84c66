"""`talkalike runs` and `talkalike rm`: the trained runs in the data folder, listed with their scores, and deleted.

    talkalike runs            # persona, base, date, headline scores (from eval.json), disk use
    talkalike runs --json
    talkalike rm noa-demo     # asks first; --yes does not

`talkalike update` keeps earlier versions of a run beside it as runs/<name>@v<N>/; they are listed under the run.

A run is a folder `runs/<name>/` with a run.json (talkalike/run.py); an interrupted one is `runs/<name>.partial/`
with a resume.json. `rm` deletes only such folders, and only inside the data folder's runs/.
"""

import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.home import resolve_home, runs_dir
from talkalike.run import Run
from talkalike.train.update import family

PARTIAL = ".partial"  # the suffix of a run still training, or interrupted (train/trainer.py)
RESUME_FILE = "resume.json"
NOT_KEPT = "*"  # marks an update whose adapter was not kept (talkalike/train/update.py)


def disk_use(folder: Path) -> int:
    """Bytes on disk under `folder`, each file once however many hard links it has (the GGUF two exports share)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total


def human_bytes(n: int) -> str:
    """1.07 GB, 542 MB, 12 kB: decimal units, as `ls -h --si` and the README use."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _scores(run_dir: Path) -> dict:
    """The tuned twin's headline scores from eval.json, when the run was evaluated: R@1 of 10, the real-vs-generated
    AUC (0.5 = indistinguishable), facts recalled and perplexity."""
    result = _read_json(run_dir / "eval.json")
    if not result:
        return {}
    headline = result.get("headline") or {}
    auc = result.get("real vs generated auc") or {}
    scores = {
        "r@1": (headline.get("next-reply ranking") or {}).get("tuned"),
        "auc": auc.get("tuned") if isinstance(auc, dict) else None,
        "facts": (headline.get("facts recalled") or {}).get("tuned"),
        "perplexity": (headline.get("perplexity") or {}).get("tuned"),
    }
    return {key: value for key, value in scores.items() if value is not None}


def _base_name(base: dict) -> str:
    """The base as a person would name it: the hub id, the embedded model's name, a local folder's own name."""
    if base.get("source") == "local":
        return Path(base.get("id", "?")).name
    return base.get("id", "?")


def list_runs(home: Path) -> list[dict]:
    """Every run and interrupted run under the data folder's runs/, newest first."""
    folder = runs_dir(home)
    rows = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_dir() or path.is_symlink() or path.name.startswith("."):
            continue  # dot names are scratch: a run being replaced, deleted or compared
        if Run.exists(path):
            run = Run.open(path)
            finished = run.info.get("finished")
            update = run.info.get("update") or {}
            rows.append({"name": path.name, "state": "trained", "persona": run.persona,
                         "base": _base_name(run.info.get("base") or {}), "finished": finished,
                         "scores": _scores(path), "bytes": disk_use(path), "path": str(path),
                         "version": int(run.info.get("version") or 1), "of": family(path.name),
                         "kept": update.get("kept", True), "dropped": update.get("dropped", [])})
        elif path.name.endswith(PARTIAL) and (path / RESUME_FILE).is_file():
            request = _read_json(path / RESUME_FILE)
            started = datetime.fromtimestamp((path / RESUME_FILE).stat().st_mtime).astimezone()
            name = path.name.removesuffix(PARTIAL)
            rows.append({"name": name, "state": "interrupted", "persona": None,
                         "base": request.get("base") or "gemma-3-270m",
                         "finished": started.isoformat(timespec="seconds"), "scores": {},
                         "bytes": disk_use(path), "path": str(path), "version": None, "of": family(name),
                         "kept": True, "dropped": []})
    # newest first, each run's versions (talkalike update) right under it, newest version first
    newest = {}
    for row in rows:
        newest[row["of"]] = max(newest.get(row["of"], ""), row["finished"] or "")
    rows.sort(key=lambda row: (newest[row["of"]], row["of"], row["name"] == row["of"], row["version"] or 0,
                               row["finished"] or ""), reverse=True)
    return rows


def _date(iso: str | None) -> str:
    if not iso:
        return "?"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def format_table(rows: list[dict]) -> str:
    """The runs as an aligned table; a score not measured is '-'."""
    header = ("run", "persona", "base", "date", "R@1", "AUC", "facts", "ppl", "disk")
    lines = [header]
    for row in rows:
        s = row["scores"]
        cells = [f"{s[key]:{spec}}" if key in s else "-"
                 for key, spec in (("r@1", ".0%"), ("auc", ".2f"), ("facts", ".0%"), ("perplexity", ".1f"))]
        persona = row["persona"] or "(interrupted)"
        name = row["name"] + ("" if row["kept"] else NOT_KEPT)
        lines.append((name, persona, row["base"], _date(row["finished"]), *cells, human_bytes(row["bytes"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {4, 5, 6, 7, 8}
    return "\n".join("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in lines)


def cmd_runs(args) -> int:
    """`talkalike runs [--json]`."""
    home = resolve_home(args.home)
    rows = list_runs(home)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        say(f"no runs yet in {runs_dir(home)}; train one with `talkalike train DATASET_DIR --name NAME`")
        return 0
    print(format_table(rows))
    if not all(row["kept"] for row in rows):
        say(f"{NOT_KEPT}: an update not kept because a fidelity measure dropped (`talkalike runs --json` says which); "
            "RUN@vN is version N of RUN.")
    say("R@1: the real next reply ranked first of 10 (chance 10%); AUC: a real-vs-generated classifier (0.50 = it "
        "cannot tell); facts: facts recalled; ppl: perplexity of the held-out replies. From `talkalike eval RUN`.")
    return 0


def run_folder_to_remove(home: Path, run: str) -> Path:
    """The folder `rm RUN` may delete: a run (or interrupted run) directly inside the data folder's runs/."""
    runs = runs_dir(home).resolve()
    given = Path(run).expanduser()
    candidates = [given] if given.is_absolute() or os.sep in run else [runs / run, runs / f"{run}{PARTIAL}"]
    for path in candidates:
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or path.resolve().parent != runs:
            raise TalkalikeError(f"{path} is not a folder inside {runs}; `talkalike rm` deletes runs only.")
        if Run.exists(path) or (path.name.endswith(PARTIAL) and (path / RESUME_FILE).is_file()):
            return path.resolve()
        raise TalkalikeError(f"{path} is not a run folder (no run.json); `talkalike rm` deletes runs only.")
    known = [row["name"] for row in list_runs(home)]
    hint = f" Known runs: {', '.join(known)}." if known else ""
    raise TalkalikeError(f"no run named {run!r} in {runs}.{hint}")


def remove_run(path: Path) -> None:
    """Delete a run folder: renamed out of the way first, so an interrupted delete never leaves half a run under the
    run's own name."""
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    path.rename(doomed)
    shutil.rmtree(doomed)


def cmd_rm(args) -> int:
    """`talkalike rm RUN [--yes]`."""
    home = resolve_home(args.home)
    path = run_folder_to_remove(home, args.run)
    if not args.yes:
        prompt = f"delete {path} ({human_bytes(disk_use(path))})? [y/N] "
        print(prompt, end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            say("kept it: nothing was deleted")
            return 1
    remove_run(path)
    say(f"deleted {path}")
    return 0
