"""The run folder that `talkalike train` writes and every later command takes: one class reads and writes run.json.

    run = Run.open(run_dir)      # raises TalkalikeError if the folder holds no run.json
    run.base_id, run.layout, run.persona, run.quantized
"""

import json
from dataclasses import dataclass
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import write_json

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Run:
    """A run folder and the record of how it was trained (run.json, as `talkalike train` wrote it)."""

    dir: Path
    info: dict

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        """The run in `run_dir`; one clear error when it is not a run folder or its run.json is unreadable."""
        run_dir = Path(run_dir)
        path = run_dir / RUN_FILE
        if not path.is_file():
            raise TalkalikeError(f"{run_dir} is not a run folder (no {RUN_FILE}); train one with `talkalike train`.")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TalkalikeError(f"{path} is not valid JSON ({error}); train the run again") from None
        return cls(run_dir, info)

    @staticmethod
    def write(run_dir: Path, info: dict) -> "Run":
        """Record `info` as the run.json of `run_dir` (atomically)."""
        write_json(Path(run_dir) / RUN_FILE, info)
        return Run(Path(run_dir), info)

    @staticmethod
    def exists(run_dir: Path) -> bool:
        """Whether `run_dir` holds a run."""
        return (Path(run_dir) / RUN_FILE).is_file()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def base(self) -> dict:
        """Where the base weights came from: {id, revision, source}."""
        return self.info["base"]

    @property
    def base_id(self) -> str:
        return self.info["base"]["id"]

    @property
    def layout(self) -> str:
        """The prompt layout the run was trained with (template.py)."""
        return self.info.get("layout", "chat")

    @property
    def quantized(self) -> bool:
        """Trained on 4-bit weights (QLoRA)."""
        return bool(self.info.get("quantized"))

    @property
    def persona(self) -> str:
        """The persona's name as the dataset stage recorded it (dataset.json, copied into run.json)."""
        return (self.info.get("dataset_info") or {}).get("persona") or self.info.get("persona") or self.dir.name

    @property
    def dataset(self) -> Path | None:
        """The dataset folder the run was trained on."""
        return Path(self.info["dataset"]) if self.info.get("dataset") else None

    @property
    def contacts(self) -> list[str] | None:
        """Whom the persona talked to, most persona turns first, when the dataset gave every sample its contact
        line (template.contact_line); None when it did not (`dataset --no-contact`, or a run from before)."""
        info = self.info.get("dataset_info") or {}
        if not info.get("contact"):
            return None
        return list(self.info.get("contacts") or [])

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"
