"""The chat page's saved conversations: one transcript per conversation, beside the terminal's, so a reload (or
another day) picks up where the user left off.

Each conversation is RUN/chats/web-YYYYMMDD-HHMMSS-xxxxxx.txt in the terminal chat's transcript format (chat.py):
a `=== time · noa · web page ===` header, then `you: …`, `Noa: …` and, for replies from the base model,
`Noa (base): …`. Written whole through a temp file on every change, 0600 in a 0700 folder: the conversations are
the user's own. The routes sit behind the server's guard like every route that returns chat content:

    GET    /page/conversations          the list, newest first: id, title (the first message), updated, messages
    POST   /page/conversations          a new one from {"messages": [{"role", "content", "base"}]}; returns its id
    GET    /page/conversations/{id}     its messages
    PUT    /page/conversations/{id}     replace its messages (the page sends the whole conversation after each turn)
    DELETE /page/conversations/{id}

    app.include_router(make_router(run_dir / "chats", persona="Noa", header="noa · web page"))
"""

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from talkalike.files import private_folder, write_atomic
from talkalike.frontends.chat import YOU, transcript_header, transcript_line

PREFIX = "web-"  # the terminal's transcripts are YYYY-MM-DD.txt in the same folder; the page lists only its own
ID = re.compile(r"web-\d{8}-\d{6}-[0-9a-f]{6}")
BASE = " (base)"  # chat --compare labels the base model's lines the same way
MAX_LISTED = 200  # the list shows the newest; older files stay on disk
MAX_MESSAGES = 2000  # a conversation of months; the model itself reads only the recent part
MAX_MESSAGE_CHARS = 20_000  # far longer than any chat message; the request-size limit applies as well
TITLE_CHARS = 60


def new_id(now: datetime | None = None) -> str:
    """A fresh conversation id: its start time (so files sort by date) and a random tail."""
    now = now or datetime.now(UTC).astimezone()
    return f"{PREFIX}{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def path_of(folder: Path, conversation: str) -> Path | None:
    """The conversation's file, or None for anything that is not an id (no path ever comes from the request)."""
    return folder / f"{conversation}.txt" if ID.fullmatch(conversation) else None


def render(messages: list[dict], persona: str, header: str, started: datetime) -> str:
    """A conversation as a transcript."""
    lines = [transcript_header(started, header)]
    for m in messages:
        # One line break only: a stray \r would read back as a line of its own.
        content = m["content"].replace("\r\n", "\n").replace("\r", "\n")
        label = YOU if m["role"] == "user" else persona + (BASE if m.get("base") else "")
        lines.append(transcript_line(label, content))
    return "\n".join(lines) + "\n"


def parse(text: str) -> list[dict]:
    """A transcript's messages: {"role", "content", "base"}; the inverse of `render` (and of chat.py's lines)."""
    messages: list[dict] = []
    for line in text.split("\n"):  # not splitlines(): U+2028 and the like belong to the message
        if line.startswith("  ") and messages:
            messages[-1]["content"] += "\n" + line[2:]
            continue
        label, sep, content = line.partition(": ")
        if line.startswith("=== ") or not sep:
            continue  # a session header, or a note like chat.py's "--- /reset ---"
        if label == YOU:
            messages.append({"role": "user", "content": content, "base": False})
        else:
            messages.append({"role": "assistant", "content": content, "base": label.endswith(BASE)})
    return messages


def summary(path: Path) -> dict:
    """What the list shows of one conversation."""
    messages = parse(path.read_text(encoding="utf-8", errors="replace"))
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    title = " ".join(first.split())
    return {
        "id": path.stem,
        "title": title if len(title) <= TITLE_CHARS else title[:TITLE_CHARS - 1] + "…",
        "updated": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        "messages": len(messages),
    }


def listing(folder: Path) -> list[dict]:
    """The page's conversations, most recently changed first."""
    if not folder.is_dir():
        return []
    paths = [p for p in folder.glob(f"{PREFIX}*.txt") if ID.fullmatch(p.stem)]
    paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [summary(p) for p in paths[:MAX_LISTED]]


def started_at(path: Path) -> datetime:
    """When a saved conversation began, from its header; now for a new one."""
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        try:
            return datetime.strptime(first[4:29], "%Y-%m-%d %H:%M:%S %z")
        except ValueError:
            pass  # a header edited by hand: the rewrite gets a new time, the messages are kept
    return datetime.now(UTC).astimezone()


def make_router(folder: Path, persona: str, header: str):
    """A FastAPI router with the routes above, saving into `folder`."""
    from fastapi import APIRouter, HTTPException, Request
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
    from starlette.concurrency import run_in_threadpool

    folder = Path(folder)
    router = APIRouter()

    class Message(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")
        role: Literal["user", "assistant"]
        content: StrictStr = Field(max_length=MAX_MESSAGE_CHARS)
        base: StrictBool = False

    class Conversation(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")
        messages: list[Message] = Field(max_length=MAX_MESSAGES)

    async def read_body(request: Request) -> list[dict]:
        # pydantic's own JSON reader, as for the chat requests: it refuses lone surrogates (which cannot be written
        # as UTF-8) and huge numbers with a 400 before anything touches the disk.
        try:
            body = Conversation.model_validate_json(await request.body())
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise HTTPException(400, f"{where + ': ' if where else ''}{problem['msg']}") from None
        return [m.model_dump() for m in body.messages]

    def existing(conversation: str) -> Path:
        path = path_of(folder, conversation)
        if path is None or not path.is_file():
            raise HTTPException(404, f"no saved conversation {conversation!r}")
        return path

    def save(path: Path, messages: list[dict]) -> None:
        private_folder(folder)
        write_atomic(path, render(messages, persona, header, started_at(path)), private=True)

    @router.get("/page/conversations")
    def list_conversations() -> dict:
        return {"conversations": listing(folder)}

    @router.post("/page/conversations")
    async def create_conversation(request: Request) -> dict:
        messages = await read_body(request)
        conversation = new_id()
        await run_in_threadpool(save, path_of(folder, conversation), messages)
        return {"id": conversation}

    @router.get("/page/conversations/{conversation}")
    def load_conversation(conversation: str) -> dict:
        path = existing(conversation)
        return {"id": conversation, "messages": parse(path.read_text(encoding="utf-8", errors="replace"))}

    @router.put("/page/conversations/{conversation}")
    async def save_conversation(conversation: str, request: Request) -> dict:
        messages = await read_body(request)
        await run_in_threadpool(save, existing(conversation), messages)
        return {"id": conversation}

    @router.delete("/page/conversations/{conversation}")
    def delete_conversation(conversation: str) -> dict:
        existing(conversation).unlink(missing_ok=True)
        return {"id": conversation, "deleted": True}

    return router
