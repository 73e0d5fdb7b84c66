"""The blind A/B test: a friend sees a held-out context and two replies, the persona's real one and the twin's, and
picks the real one. Served by `talkalike serve RUN` at /ab; needs no model.

`talkalike eval RUN` pre-generates the pairs into RUN/ab/pairs.jsonl (one JSON object per line:
{"id", "context": [{"role", "content"}], "real": [messages], "twin": [messages]}). Each answer is added to
RUN/ab/answers.jsonl, and `results(run_dir)` gives the "fooled" rate (the friend picked the twin as the real one)
with a Wilson 95 % interval, which the report shows. A rater answers a round of ROUND questions (fewer if there
are fewer pairs), sees "7 of 20" as they go, may skip one, and gets their own score at the end; within a round the
page names the questions it was shown (`/ab/next?seen=…`), so no pair comes twice.

The pairs are real held-out conversations, so the folder and its files are the owner's alone (0700/0600). A server
with an API key lets raters in with a share token instead (RUN/ab/share-token; the link is /ab?t=TOKEN), and a
rater sees only the question, the round's length and, once answered, which reply was real: never the tally.

    app.include_router(talkalike.evaluate.abtest.make_router(run_dir))
"""

import json
import random
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from talkalike.evaluate.metrics import wilson_interval
from talkalike.files import private_folder, read_jsonl, say, write_atomic, write_jsonl

PAIRS = "pairs.jsonl"
ANSWERS = "answers.jsonl"
SHARE_TOKEN = "share-token"
PAGE = Path(__file__).resolve().parents[1] / "frontends" / "static" / "ab.html"
MAX_OPEN_QUESTIONS = 10_000  # questions shown but not answered yet; the oldest are forgotten beyond this
ROUND = 20  # questions per rater: WhatsApp-Llama's friends' test had 20, and a friend's patience is about that


def ab_dir(run_dir: Path) -> Path:
    """Where a run's blind-test pairs and answers live."""
    return Path(run_dir) / "ab"


def write_pairs(run_dir: Path, pairs: list[dict]) -> Path:
    """Write the blind-test pairs atomically (temp file, then rename), replacing earlier ones."""
    return write_jsonl(private_folder(ab_dir(run_dir)) / PAIRS, pairs, private=True)


def read_pairs(run_dir: Path) -> list[dict]:
    """The run's blind-test pairs; empty if `talkalike eval` has not made any."""
    path = ab_dir(run_dir) / PAIRS
    return read_jsonl(path) if path.is_file() else []


def read_answers(run_dir: Path) -> list[dict]:
    """Every answer recorded so far. A line that is not a whole answer (power loss can tear the last one) is
    skipped with a note, so one bad line never stops the test; the next answer rewrites the file without it."""
    path = ab_dir(run_dir) / ANSWERS
    if not path.is_file():
        return []
    answers, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            answer = json.loads(line) if line.strip() else None
        except ValueError:
            answer = {}
        if answer is None:
            continue
        if isinstance(answer, dict) and isinstance(answer.get("pair"), str) and isinstance(answer.get("fooled"), bool):
            answers.append(answer)
        else:
            torn += 1
    if torn:
        say(f"note: skipped {torn} unreadable line{'s' if torn > 1 else ''} in {path}")
    return answers


def share_token(run_dir: Path) -> str:
    """The token raters use instead of the API key (/ab?t=TOKEN): made once per run and kept, so links last."""
    path = ab_dir(run_dir) / SHARE_TOKEN
    token = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    if len(token) < 16:
        token = secrets.token_urlsafe(18)
        write_atomic(private_folder(ab_dir(run_dir)) / SHARE_TOKEN, token + "\n", private=True)
    return token


def results(run_dir: Path) -> dict:
    """The fooled rate with its Wilson 95 % interval, overall and per rater."""
    answers = read_answers(run_dir)
    fooled = sum(a["fooled"] for a in answers)
    low, high = wilson_interval(fooled, len(answers))
    raters: dict[str, list[int]] = {}
    for answer in answers:
        tally = raters.setdefault(answer.get("rater") or "anonymous", [0, 0])
        tally[0] += answer["fooled"]
        tally[1] += 1
    return {
        "answers": len(answers),
        "fooled": fooled,
        "fooled rate": fooled / len(answers) if answers else None,
        "wilson 95%": [low, high],
        "raters": {name: {"fooled": f, "answers": n} for name, (f, n) in sorted(raters.items())},
        # WhatsApp-Llama's manual test fooled 2 friends of 20: the best published figure for a comparable tool
        "reference": {"fooled": 2, "answers": 20, "source": "WhatsApp-Llama README"},
    }


def make_router(run_dir: Path, seed: int | None = None):
    """A FastAPI router with GET /ab (the page), GET /ab/next (a question; `seen` names this round's earlier
    questions) and POST /ab/answer."""
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
    from starlette.concurrency import run_in_threadpool

    run_dir = Path(run_dir)
    router = APIRouter()
    chooser = random.Random(seed)
    # question id -> (pair id, which side is real); kept server-side so the page never learns the answer before
    # the friend commits to one.
    open_questions: dict[str, tuple[str, str]] = {}
    asked: dict[str, str] = {}  # question id -> pair id, answered or not: what a round has shown already
    lock = threading.Lock()

    class Answer(BaseModel):
        model_config = ConfigDict(strict=True)
        question: StrictStr = Field(max_length=64)
        choice: StrictStr = Field(pattern="^[ab]$")
        rater: StrictStr | None = Field(default=None, max_length=64)

    @router.get("/ab", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @router.get("/ab/next")
    def next_question(request: Request) -> dict:
        pairs = read_pairs(run_dir)
        if not pairs:
            raise HTTPException(404, f"no blind-test pairs in {ab_dir(run_dir)}; run `talkalike eval {run_dir}` first")
        with lock:
            seen = {asked[q] for q in request.query_params.getlist("seen")[:ROUND] if q in asked}  # this round's
            answered = {a["pair"] for a in read_answers(run_dir)}
            # Pairs nobody answered yet first, then any this rater has not seen this round, then repeats.
            fresh = [p for p in pairs if p["id"] not in answered | seen] or [p for p in pairs if p["id"] not in seen]
            pair = chooser.choice(fresh or pairs)
            real_side = chooser.choice("ab")
            question = secrets.token_hex(8)
            open_questions[question] = (pair["id"], real_side)
            asked[question] = pair["id"]
            for kept in (open_questions, asked):
                while len(kept) > MAX_OPEN_QUESTIONS:
                    kept.pop(next(iter(kept)))
        twin_side = "b" if real_side == "a" else "a"
        sides = {real_side: pair["real"], twin_side: pair["twin"]}
        return {
            "question": question,
            "round": min(ROUND, len(pairs)),
            "context": pair["context"],
            "replies": [{"key": key, "messages": sides[key]} for key in "ab"],
        }

    @router.post("/ab/answer")
    async def answer(request: Request) -> dict:
        # Parsed here, strictly, rather than by FastAPI: pydantic's own JSON reader refuses lone surrogates, huge
        # numbers and deep nesting with a 422 instead of failing later when the answer is written.
        try:
            body = Answer.model_validate_json(await request.body())
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise HTTPException(422, f"{where + ': ' if where else ''}{problem['msg']}") from None
        return await run_in_threadpool(record, body)

    def record(body: Answer) -> dict:
        with lock:
            found = open_questions.pop(body.question, None)
            if found is None:
                raise HTTPException(404, "unknown or already answered question; fetch /ab/next again")
            pair_id, real_side = found
            fooled = body.choice != real_side
            entry = {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "pair": pair_id,
                "choice": body.choice,
                "real": real_side,
                "fooled": fooled,
                "rater": body.rater or None,
            }
            # Rewritten whole through a temp file rather than appended: a crash leaves the old file or the new one,
            # and a torn line that an earlier crash left is dropped here.
            write_jsonl(private_folder(ab_dir(run_dir)) / ANSWERS, [*read_answers(run_dir), entry], private=True)
        return {"real": real_side, "fooled": fooled}

    return router
