"""The `talkalike` command: one subcommand per pipeline stage.

Run `talkalike --help`. Each subcommand's handler lives in its stage's module and is imported only when that
subcommand runs, so `--help`, `parse` and `import` never pay for torch or transformers.
"""

import argparse
import importlib
import sys

from talkalike import __version__, console
from talkalike.errors import TalkalikeError

# subcommand -> "module:function"; each function takes the parsed args and returns an exit code.
HANDLERS = {
    "parse": "talkalike.store:cmd_parse",
    "import": "talkalike.store:cmd_import",
    "chats": "talkalike.store:cmd_chats",
    "people": "talkalike.store:cmd_people",
    "dataset": "talkalike.prepare.dataset:cmd_dataset",
    "inspect": "talkalike.prepare.dataset:cmd_inspect",
    "plan": "talkalike.train.plan:cmd_plan",
    "train": "talkalike.train.trainer:cmd_train",
    "update": "talkalike.train.update:cmd_update",
    "eval": "talkalike.evaluate.evaluate:cmd_eval",
    "tune-generation": "talkalike.evaluate.tune:cmd_tune_generation",
    "chat": "talkalike.frontends.chat:cmd_chat",
    "serve": "talkalike.frontends.serve:cmd_serve",
    "export": "talkalike.export.merged:cmd_export",
    "demo": "talkalike.demo:cmd_demo",
    "runs": "talkalike.runs:cmd_runs",
    "rm": "talkalike.runs:cmd_rm",
}

DATE_ORDERS = ("dmy", "mdy", "ymd")
PRESETS = ("default", "original")


# Said under `parse` and `import`: the cap on one chat text (talkalike.sources.MAX_EXPORT_ENV).
SIZE_NOTE = ("A chat text over 1024 MiB is refused as no real export; raise the limit with "
             "TALKALIKE_MAX_EXPORT_MB=MIB.")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default shown unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _global_options(parser: argparse.ArgumentParser, default) -> None:
    """--home and --verbose, accepted before the subcommand and after it (`default` is SUPPRESS on subcommands, so
    one given before is not overwritten)."""
    parser.add_argument("--home", default=default, metavar="DIR",
                        help="data folder (default: $TALKALIKE_HOME, else $XDG_DATA_HOME/talkalike)")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show the libraries' warnings, logs and progress bars, and each stage's "
                             "resolved config")


def _sub(subparsers, name: str, help: str, example: str, note: str = "") -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=help + (f"\n\n{note}" if note else ""),
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )
    _global_options(parser, argparse.SUPPRESS)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, every stage's options included."""
    parser = argparse.ArgumentParser(
        prog="talkalike",
        description="Turn your own chat exports into a chatbot that texts like you.",
        epilog="example:\n  talkalike import 'WhatsApp Chat with Maya.zip' && talkalike dataset --me Dana --out ds",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"talkalike {__version__}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(sub, "parse", "print each entry of an export as one JSON object per line; stores nothing",
             "talkalike parse 'WhatsApp Chat with Maya.txt' | head", SIZE_NOTE)
    p.add_argument("file", help="a WhatsApp .txt/.zip export or a Telegram result.json")
    p.add_argument("--date-order", choices=DATE_ORDERS, help="day/month order (default: inferred from the file's own dates)")

    p = _sub(sub, "import", "import exports into the local store, with a report per file",
             "talkalike import 'WhatsApp Chat with Maya.zip' --chat Maya", SIZE_NOTE)
    p.add_argument("files", nargs="+", metavar="FILE", help="WhatsApp .txt/.zip exports or Telegram result.json")
    p.add_argument("--chat", action="append", metavar="NAME",
                   help="chat name (default: the export's own name); or 'EXPORTED=NAME', repeatable, to store one chat "
                        "of a Telegram account export under another name, e.g. --chat 'Maya=Maya (telegram)'")
    p.add_argument("--date-order", choices=DATE_ORDERS, help="day/month order (default: inferred from the file's own dates)")

    p = _sub(sub, "chats", "list imported chats with message counts and date ranges",
             "talkalike chats --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--remove", metavar="NAME", help="remove this chat and its messages (default: list only)")

    p = _sub(sub, "people", "list senders across all chats", "talkalike people --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _sub(sub, "dataset", "build the fine-tuning set where the persona is the assistant",
             "talkalike dataset --me Dana --out ~/dana-ds")
    p.add_argument("--me", required=True, metavar="NAME", help="the persona: the sender to imitate")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (train.jsonl, eval.jsonl, stats.json)")
    p.add_argument("--chat", action="append", metavar="NAME", help="only these chats (repeatable; default all)")
    p.add_argument("--gap-minutes", type=float, default=60.0, help="silence that starts a new conversation")
    p.add_argument("--eval-share", type=float, default=0.2, help="latest share of conversations held out")
    p.add_argument("--no-privacy", action="store_true", help="do not pseudonymise personal data (not advised)")
    p.add_argument("--scrub-names", action="store_true", help="also pseudonymise third-party names")
    p.add_argument("--no-contact", action="store_true",
                   help="no system line saying who the persona is talking to at the head of each sample")
    p.add_argument("--region", help="phone region tried first for numbers written without +CC, e.g. IL (any case; "
                        "default: none, only the regions of the chat's own +CC numbers are tried). Numbers are "
                        "replaced whatever the region")
    p.add_argument("--layout", "--template", dest="layout", choices=("chat", "original"), default="chat",
                   help="how train renders samples: the base model's chat template or the original "
                        "<s><person1>…</s><person2>… layout")
    p.add_argument("--max-tokens", type=int, default=1024, help="window length; longer conversations are cut")
    p.add_argument("--base", help="count tokens with this model's tokenizer (default: a len(text)/2.5 estimate)")
    p.add_argument("--facts", metavar="FILE", help="facts about the persona (JSONL: question, answers, topic) to "
                                                   "copy into the dataset for `talkalike eval`'s facts probe "
                                                   "(default: none)")

    p = _sub(sub, "inspect", "print rendered samples with the trained (persona) tokens highlighted",
             "talkalike inspect ~/dana-ds -n 2")
    p.add_argument("dir", help="a dataset folder")
    p.add_argument("-n", type=int, default=3, help="how many samples")
    p.add_argument("--base", help="render with this model's tokenizer and chat template (default: a plain "
                                  "template, one token per character)")

    p = _sub(sub, "plan", "estimate parameters, peak memory and training time on this machine before training",
             "talkalike plan --base yam-peleg/Hebrew-Mistral-7B --preset original --json")
    p.add_argument("--base", help="model id or local folder (default: the embedded Gemma 3 270M)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="training recipe (default: original on a CUDA GPU, else default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's)")
    p.add_argument("--dataset", metavar="DIR",
                   help="a dataset folder whose size the training time is estimated for (default: the bundled "
                        "sample chat's)")
    p.add_argument("--no-timing", action="store_true",
                   help="skip timing a training step of one layer on this machine (no time estimate)")
    p.add_argument("--memory-budget", metavar="GB",
                   help="how many layers a CUDA run keeps whole (not recomputed) on this much GPU memory (GB, or "
                        "auto: this machine's card), as `talkalike train --memory-budget` does (default: no budget, "
                        "every layer recomputed)")

    p = _sub(sub, "train", "fine-tune a base model with LoRA (QLoRA on a CUDA GPU) into a run folder",
             "talkalike train ~/dana-ds --name dana")
    p.add_argument("dataset", nargs="?", help="a dataset folder from `talkalike dataset`")
    p.add_argument("--base", help="model id or local folder (default: the embedded Gemma 3 270M)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="training recipe (default: original on a CUDA GPU, else default)")
    p.add_argument("--name", help="run name (default: derived from the dataset and time)")
    p.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted run from its last checkpoint (default: start a new run)")
    p.add_argument("--epochs", type=float, help="override the preset's epochs (default: the preset's)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: no limit)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run of that name (only once the new one is complete), and train even "
                        "when the dataset is too small to learn from")
    p.add_argument("--all-turns", action="store_true", help="take loss on every turn, as the original did")
    p.add_argument("--preference-pairs", type=int, metavar="N",
                   help="after the supervised passes, DPO on N pairs of the persona's real reply against one of theirs "
                        "from another conversation (default: the preset's, 0)")
    p.add_argument("--memory-budget", metavar="GB",
                   help="on a CUDA GPU, the memory training may take (GB, or auto: the card's): the last layers run "
                        "whole instead of being recomputed for the backward, as many as fit in 90%% of it (default: "
                        "all recomputed, in the original recipe's memory)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the last step, which answers some training turns with the new twin and scales its emoji "
                        "and laugh odds toward the persona's rates (RUN/generation.json; default: calibrate)")

    p = _sub(sub, "update", "catch a run up with later exports: import, rebuild its dataset, continue its adapter, "
                            "keep the new one only if no fidelity measure dropped",
             "talkalike update noa 'WhatsApp Chat with Maya.zip'",
             "The old conversations are replayed beside the new ones (as many as new, at most all), so nothing is "
             "forgotten. Both versions stay listed in `talkalike runs`; the one not kept is RUN@vN.")
    p.add_argument("run", help="run name")
    p.add_argument("files", nargs="+", metavar="FILE", help="the new WhatsApp .txt/.zip exports or Telegram result.json")
    p.add_argument("--chat", action="append", metavar="NAME",
                   help="chat name, as for `talkalike import` (default: the export's own name)")
    p.add_argument("--date-order", choices=DATE_ORDERS, help="day/month order (default: inferred from the file's own dates)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the rebuilt dataset (default: DATA/datasets/RUN-YYYYmmdd-HHMMSS)")
    p.add_argument("--epochs", type=float, help="override the preset's epochs (default: the preset's)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: no limit)")
    p.add_argument("--limit", type=int, help="compare on at most this many held-out turns (default: all)")
    p.add_argument("--force", action="store_true",
                   help="train even when the new data is too small to learn from")

    p = _sub(sub, "eval", "measure how much the twin sounds like the persona; writes eval.json and report.html",
             "talkalike eval dana")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--limit", type=int, help="at most this many held-out turns (default: all)")
    p.add_argument("--canary", action="append", metavar="SECRET",
                   help="a secret planted in the training chats that must never come out (repeatable; "
                        "default: the e-mails and phone numbers written out in training replies)")
    p.add_argument("--facts", metavar="FILE", help="facts the twin should know (JSONL: question, answers, topic; "
                                                   "default: facts.jsonl in the run's dataset folder, if there)")

    p = _sub(sub, "tune-generation",
             "scan sampling settings and in-character switches on held-out conversations, save the best",
             "talkalike tune-generation dana --limit 8 --top-p 1.0")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--limit", type=int, help="at most this many held-out turns (default 32)")
    p.add_argument("--temperature", type=float, nargs="+", metavar="T", help="temperatures to try (default 0.5 0.8 1.0)")
    p.add_argument("--repetition-penalty", type=float, nargs="+", metavar="P",
                   help="repetition penalties to try (default 1.0 1.025 1.1)")
    p.add_argument("--top-p", type=float, nargs="+", metavar="P", help="top-p values to try (default 1.0 0.9)")
    p.add_argument("--sampling-only", action="store_true",
                   help="scan the sampling grid alone, not the in-character switches after it")

    p = _sub(sub, "chat", "chat with the twin in the terminal", "talkalike chat dana --compare")
    p.add_argument("run", nargs="?", help="run name or folder")
    p.add_argument("--base", help="chat with a base model alone (no adapter), for comparison (default: the run's "
                                  "twin)")
    p.add_argument("--compare", action="store_true", help="show the base model's reply beside the tuned one")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the run's, else 0.5)")
    p.add_argument("--repetition-penalty", type=float, help="repetition penalty (default: the run's, else 1.025)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (default: the run's, else 1.0)")
    p.add_argument("--max-new-tokens", type=int, help="longest reply in tokens (default: the run's, else 200)")
    _twin_options(p)

    p = _sub(sub, "serve", "serve a web chat, a blind A/B test and an OpenAI-compatible API",
             "talkalike serve dana --port 8000")
    p.add_argument("run", nargs="?", help="run name or folder")
    p.add_argument("--base", help="serve a base model alone (no adapter; default: the run's twin)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback needs an API key")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="read the bearer key that every chat route requires from FILE (first line; default: none, "
                        "then --api-key, then $TALKALIKE_API_KEY)")
    p.add_argument("--api-key", help="the bearer key itself; other users can see it in `ps`, so prefer "
                                     "--api-key-file or $TALKALIKE_API_KEY (the default when neither flag is given)")
    _twin_options(p)

    p = _sub(sub, "export", "export the twin for local runners", "talkalike export dana --format ollama")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--format", required=True, choices=("merged", "gguf", "ollama"),
                   help="merged safetensors, one GGUF file, or a GGUF plus an Ollama Modelfile")
    p.add_argument("--out", help="output folder (default: RUN/export-FORMAT)")
    p.add_argument("--gguf-type", choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                   help="GGUF weight type for gguf/ollama (norms always stay f32)")

    p = _sub(sub, "demo", "the whole pipeline on the bundled sample chat with the embedded model",
             "talkalike demo")
    p.add_argument("--quick", action="store_true", help="fewer training steps and eval turns")

    p = _sub(sub, "runs", "list the trained runs: persona, base, date, headline scores and disk use",
             "talkalike runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _sub(sub, "rm", "delete a trained run folder (asks first)", "talkalike rm noa-demo --yes")
    p.add_argument("run", help="run name or folder inside the data folder's runs/")
    p.add_argument("--yes", "-y", action="store_true", help="delete without asking")
    return parser


def _twin_options(p) -> None:
    """Whom the twin talks to and what it recalls: shared by chat and serve."""
    p.add_argument("--as", dest="as_name", metavar="NAME",
                   help="whom the twin thinks it is talking to (default: the contact the persona wrote to most)")
    p.add_argument("--memories", type=int, metavar="N",
                   help="past exchanges recalled into each reply's prompt (default: 3, as in training; 0 = off)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting, so tests call it in-process."""
    args = build_parser().parse_args(argv)
    console.setup(verbose=args.verbose)
    module_name, function_name = HANDLERS[args.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        return int(handler(args) or 0)
    except TalkalikeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
