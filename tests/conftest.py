"""Shared test fixtures: a tiny tokenizer trained here, a tiny Gemma-shaped model built from a config, a temp data folder.

Nothing is downloaded. The tiny model has the embedded model's architecture (Gemma 3) and a Gemma-style chat template,
so the code paths match the real thing at a fraction of the cost.
"""

from pathlib import Path

import pytest

from talkalike.files import write_json
from talkalike.template import GEMMA_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

CORPUS = [
    "hey what's up? haha ok 😂 see you at the beach",
    "שלום מה קורה? חחח יאללה נתראה",
    "I think we should meet at the café on Dizengoff at eight, if that suits you.",
    "lol pita the cat broke my scooter again 🙈",
    "Hello there, how are you today?",
    "ok\n<|msg|>\nsure\n<|msg|>\ncoming 🏃‍♀️",
    "user model Noa: Daniel: 0123456789 +972 50-123-4567 @ . , ! ?",
]


def load_script(path: Path):
    """A script outside the package (benchmarks/, examples/) imported as a module, for tests of its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with a few hundred tokens and a Gemma-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = GEMMA_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer Gemma 3 causal LM with random weights."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma3ForCausalLM(config)


def build_windowed_gemma(vocab_size: int, seed: int = 0):
    """A 3-layer Gemma 3 with an 8-token sliding window, so decoders cross the window's edge, and norms away from
    their zero init, so a wrong (1 + w) would show."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.3)
    return model


def build_tiny_llama(model_type: str, dtype=None, **extra):
    """A 2-layer Llama-family model ("mistral", "qwen2", "llama") with random weights; head_dim 16 and 4 query heads
    per key/value head, the smallest shapes the Triton step's attention tiles take."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=211, hidden_size=128, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                  max_position_embeddings=512, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32).eval()


def make_run(folder: Path, base_dir: Path, tokenizer, target_modules="all-linear", seed: int = 0, **info) -> Path:
    """A run folder as `talkalike train` writes it: a LoRA adapter with random, non-zero weights over the base in
    `base_dir`, the tokenizer, and run.json naming that base (plus `info`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "tokenizer")
    base_info = {"id": str(base_dir), "revision": None, "source": "local"}
    write_json(folder / "run.json", {"base": base_info, "layout": "chat", "quantized": False} | info)
    return folder


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache():
    """Every data folder in the suite shares one converted embedded model, so it is converted once per checkout
    instead of once per test (about a minute each); tests of the conversion itself pass their own folder."""
    import os

    cache = Path(__file__).resolve().parents[1] / ".cache" / "models"
    previous = os.environ.get("TALKALIKE_MODELS")
    os.environ["TALKALIKE_MODELS"] = str(cache)
    yield cache
    if previous is None:
        del os.environ["TALKALIKE_MODELS"]
    else:
        os.environ["TALKALIKE_MODELS"] = previous


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A tiny fast tokenizer with a Gemma-style chat template (special ids: pad 0, eos 1, bos 2)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A folder holding a tiny Gemma 3 model and its tokenizer, usable as `--base DIR`."""
    folder = tmp_path_factory.mktemp("tiny-model")
    model = build_tiny_model(len(tiny_tokenizer))
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty data folder; TALKALIKE_HOME points at it so nothing touches the user's real one."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("TALKALIKE_HOME", str(folder))
    return folder


@pytest.fixture
def one_torch_thread(monkeypatch):
    """The tiny model's ops are too small to split across threads; on a shared CI machine two threads only wait."""
    import torch

    from talkalike.decode import twin

    threads = torch.get_num_threads()
    monkeypatch.setattr(twin, "physical_cores", lambda: 1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
