"""Where the user's data lives: `--home`, else $TALKALIKE_HOME, else the XDG data folder."""

import os
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.run import Run


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The data folder (created on first use): `home`, else $TALKALIKE_HOME, else $XDG_DATA_HOME/talkalike."""
    if home is None:
        home = os.environ.get("TALKALIKE_HOME")
    if not home:
        xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        home = Path(xdg) / "talkalike"
    path = Path(home).expanduser()
    if path.exists() and not path.is_dir():
        raise TalkalikeError(f"the data folder {path} is a file; choose a folder with --home or $TALKALIKE_HOME.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TalkalikeError(f"cannot create the data folder {path} ({error.strerror or error}); choose another with "
                             "--home or $TALKALIKE_HOME.") from None
    return path


def store_path(home: Path) -> Path:
    """The SQLite corpus in the data folder."""
    return home / "talkalike.db"


def runs_dir(home: Path) -> Path:
    """Training runs live in `runs/<name>/`."""
    return home / "runs"


def models_dir(home: Path) -> Path:
    """Converted base models (the embedded GGUF as safetensors): `models/` in the data folder, or $TALKALIKE_MODELS.

    The variable lets several data folders share one converted copy (the test suite converts once per session)."""
    shared = os.environ.get("TALKALIKE_MODELS")
    return Path(shared) if shared else home / "models"


def resolve_run(home: Path, run: str | os.PathLike) -> Path:
    """A run folder from a path or a run name; a clear error if there is none."""
    candidates = [Path(run), runs_dir(home) / str(run)]
    for path in candidates:
        if Run.exists(path):
            return path
    known = sorted(p.name for p in runs_dir(home).glob("*") if Run.exists(p))
    hint = f" Known runs: {', '.join(known)}." if known else " Train one with `talkalike train DATASET_DIR`."
    raise TalkalikeError(f"no run folder at {run!r}.{hint}")
