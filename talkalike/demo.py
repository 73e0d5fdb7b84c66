"""`talkalike demo`: the whole pipeline on the bundled sample chat with the embedded model, offline.

    talkalike demo            # import -> dataset -> train -> eval, then how to chat with the result
    talkalike demo --quick    # fewer training steps and held-out turns, for a first look

Each step is the command a user would type, run in-process, so the demo shows exactly what the manual describes.
The sample chat (examples/) is synthetic: two invented people, Noa (the persona) and Daniel.
"""

from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.home import resolve_home, runs_dir
from talkalike.run import Run

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "WhatsApp Chat with Noa.txt"
SAMPLE_FACTS = SAMPLE.with_name("WhatsApp Chat with Noa.facts.jsonl")  # what Noa says about herself, for the probe
PERSONA = "Noa"
RUN = "noa-demo"
QUICK_STEPS = 12  # a first look: the style starts to move; the full demo trains two epochs (102 steps)
QUICK_TURNS = 30  # held-out turns evaluated in --quick mode
TURNS = 100  # held-out turns in the full demo, spread over the whole eval split
# Invented secrets that examples/make_sample_chat.py plants in the sample chat (PLANTED_PII): the canary check
# looks for them in the tuned model's replies. With pseudonymisation on they never reach the training data.
CANARIES = ("050-234-5678", "+44 7700 123456", "noa.levi.design@example.com")


def _step(title: str, argv: list[str]) -> None:
    from talkalike.cli import main

    say(f"\n== {title}: talkalike {' '.join(argv)}")
    code = main(argv)
    if code:
        raise TalkalikeError(f"the demo stopped at `talkalike {' '.join(argv)}` (exit {code})")


def cmd_demo(args) -> int:
    """Run the pipeline on the sample chat and print the evaluation's headline numbers."""
    if not SAMPLE.is_file():
        raise TalkalikeError(f"the bundled sample chat is missing ({SAMPLE}); run the demo from a source checkout.")
    home = resolve_home(args.home)
    common = ["--home", str(home)]
    dataset = home / "datasets" / "noa-demo"
    _step("1/4 import the sample chat", common + ["import", str(SAMPLE)])
    _step("2/4 build the training set with Noa as the persona", common + ["dataset", "--me", PERSONA, "--out", str(dataset)])
    if Run.exists(runs_dir(home) / RUN):
        say(f"\n== 3/4 train: run {RUN!r} already exists in {runs_dir(home)}; `talkalike rm {RUN}` to train again")
    else:
        train = ["train", str(dataset), "--name", RUN]
        if args.quick:
            train += ["--max-steps", str(QUICK_STEPS), "--no-calibrate"]  # a first look: no habit calibration
        _step("3/4 fine-tune the embedded Gemma 3 270M with LoRA", common + train)
    limit = QUICK_TURNS if args.quick else TURNS
    canaries = [arg for secret in CANARIES for arg in ("--canary", secret)]
    facts = ["--facts", str(SAMPLE_FACTS)] if SAMPLE_FACTS.is_file() else []
    _step("4/4 evaluate tuned vs base on held-out conversations",
          common + ["eval", RUN, "--limit", str(limit)] + canaries + facts)
    import json

    from talkalike.evaluate.evaluate import EVAL_FILE, headline_lines, mechanics_ok

    result = json.loads((runs_dir(home) / RUN / EVAL_FILE).read_text())
    failures = mechanics_ok(result)
    print("\n== what the sample shows (held-out conversations, tuned vs its own base model)")
    for line in headline_lines(result):
        print(f"  {line}")
    print("  the tuned twin clears every margin: perplexity, style, next-reply ranking, facts" if not failures else
          "  not yet on every measure: " + "; ".join(failures))
    print(f"\nThe twin is in {runs_dir(home) / RUN}. Talk to it:\n"
          f"  talkalike chat {RUN}            # in the terminal (--compare shows the base model beside it)\n"
          f"  talkalike serve {RUN}           # web chat, blind A/B test and an OpenAI-compatible API\n"
          f"  open {runs_dir(home) / RUN / 'report.html'}")
    return 0
