"""Base-model loading: local folders, unreachable bases, and the embedded GGUF converted once."""

import subprocess
import sys
from pathlib import Path

import pytest

from talkalike.errors import TalkalikeError
from talkalike.model import EMBEDDED, load_base, load_tokenizer, resolve_base


def test_a_local_folder_loads_as_base_with_its_tokenizer(tiny_model_dir, tmp_path):
    model = load_base(str(tiny_model_dir), tmp_path)
    tokenizer = load_tokenizer(str(tiny_model_dir), tmp_path)
    assert model.config.vocab_size == len(tokenizer)
    assert model.talkalike_base["source"] == "local"
    assert model.talkalike_base["revision"].startswith("sha256:")


def test_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(TalkalikeError, match="no model folder"):
        load_base(str(tmp_path / "nope"), tmp_path)


def test_a_folder_without_config_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TalkalikeError, match="config.json"):
        resolve_base(str(tmp_path / "empty"), tmp_path)


def test_an_uncached_hub_id_fails_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(TalkalikeError, match="neither a local folder nor in the Hugging Face cache"):
        load_base("nobody-here/no-such-model", tmp_path)


CONVERT = """
import sys
from pathlib import Path
from talkalike.model import ensure_embedded
print(ensure_embedded(Path(sys.argv[1])))
"""


@pytest.mark.slow
def test_the_embedded_gguf_converts_once_under_concurrency_and_writes_sensible_text(tmp_path):
    models = tmp_path / "models"
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(models)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum("converting the embedded" in err for _, err in outputs) == 1
    folder = Path(outputs[0][0].strip())
    assert folder == models / EMBEDDED
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [EMBEDDED]
    assert not list(models.glob(".*tmp*"))

    model = load_base(None, tmp_path)
    tokenizer = load_tokenizer(None, tmp_path)
    assert "quantization_config" not in model.config.to_dict()
    ids = tokenizer("The capital of France is", return_tensors="pt")
    text = tokenizer.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0])
    assert "Paris" in text or "France" in text.split("is", 1)[1]
