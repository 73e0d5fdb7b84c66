"""What the terminal shows: our own progress and results by default, the libraries' chatter only with `--verbose`.

    from talkalike import console
    console.setup(verbose=False)          # once per command, by cli.main
    console.detail("config: ...")         # shown with --verbose only
    console.done("eval loss 2.35", "talkalike eval noa")   # done in 9 min, eval loss 2.35 → next: talkalike eval noa

transformers, peft, TRL and torch warn about their own deprecations (FutureWarning), log advice meant for library
authors and draw progress bars for every weight load ("Loading weights", "Converting … GGUF tensors"). A user of
talkalike can act on none of it, so by default it is switched off here, in one place, through the libraries' own
switches; `talkalike --verbose COMMAND` shows all of it. Nothing here imports a heavy library.
"""

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager

from talkalike.files import say

# Library loggers that speak to library authors (hub downloads, weight loading reports, TRL/peft advice).
LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "peft", "trl", "accelerate", "datasets", "torch")
# The libraries read these when they are imported; set before that, they take effect with no import here.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DATASETS_VERBOSITY": "error",
}

_state = {"verbose": False, "started": time.monotonic()}


def setup(verbose: bool = False) -> None:
    """Quiet the libraries (or let them speak, with `verbose`) and start the command's clock."""
    _state["verbose"] = verbose
    _state["started"] = time.monotonic()
    if verbose:
        for key in QUIET_ENVIRONMENT:
            if os.environ.get(key) == QUIET_ENVIRONMENT[key]:
                os.environ.pop(key)
        level = logging.INFO
    else:
        for key, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        # Deprecation notices are for the code that calls a library, not for the person running talkalike.
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
        level = logging.ERROR
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # A library imported earlier in this process (tests, the demo's later steps) read the environment already.
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()


def verbose() -> bool:
    """Whether `--verbose` was given."""
    return _state["verbose"]


def detail(text: str) -> None:
    """A diagnostic line for `--verbose` only (resolved configs, library internals)."""
    if _state["verbose"]:
        say(text)


@contextmanager
def quiet_gguf_loading():
    """transformers' GGUF loader draws a plain tqdm bar that none of its switches turns off; hide it unless verbose."""
    if _state["verbose"]:
        yield
        return
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    original = gguf_loading.tqdm
    gguf_loading.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_loading.tqdm = original


def elapsed(seconds: float) -> str:
    """A duration as people say it: 42 s, 9 min, 1 h 05 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def done(summary: str, next_command: str | None = None) -> None:
    """The one line that ends a long stage: how long it took, what came out, and the command to run next."""
    line = f"done in {elapsed(time.monotonic() - _state['started'])}"
    if summary:
        line += f", {summary}"
    if next_command:
        line += f" → next: {next_command}"
    say(line)
