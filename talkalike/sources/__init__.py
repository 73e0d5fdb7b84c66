"""Chat export sources, one module each, and `read_export`, which opens any export file and picks its source.

A source module has `parse(text, name, date_order=None) -> ParsedExport`. Files are recognised by their bytes, not their
extension: a zip (as shared from the phone), a Telegram `result.json`, else a WhatsApp text export.
Try it: `talkalike parse 'WhatsApp Chat with Maya.zip' | head`.
"""

import io
import re
import zipfile
from pathlib import Path, PurePosixPath

from talkalike.errors import TalkalikeError
from talkalike.message import ParsedExport
from talkalike.sources import telegram, whatsapp

SOURCES = {"whatsapp": whatsapp.parse, "telegram": telegram.parse}

ZIP_MAGIC = b"PK\x03\x04"
# The start of a file is enough to tell text from binary: text exports never hold NUL bytes.
SNIFF_BYTES = 8192
_VISIBLE = re.compile("[^\ufeff \t\r\n]")


def read_exports(path: str | Path, date_order: str | None = None) -> list[ParsedExport]:
    """Every chat in one export file: one for WhatsApp and single-chat Telegram, several for a whole Telegram account."""
    path = Path(path)
    if not path.exists():
        raise TalkalikeError(f"{path}: no such file.")
    if path.is_dir() and (path / "result.json").is_file():
        path = path / "result.json"  # Telegram Desktop's export folder
    elif path.is_dir():
        raise TalkalikeError(f"{path} is a folder; give the export file inside it (the .txt, .zip or result.json).")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TalkalikeError(f"{path}: cannot read it ({error.strerror}).") from None
    if data.startswith(ZIP_MAGIC):
        member, data = _chat_member(path, data)
        name = whatsapp.chat_name_from_filename(path.name)
        if PurePosixPath(member).name == "result.json":
            name = path.stem
        label = f"{path.name} ({member})"
    else:
        name = _name_from_path(path)
        label = path.name
    text = _decode(data, label)
    del data  # a large export's bytes need not stay beside its text while it is parsed
    if text.lstrip().startswith("{"):  # iOS WhatsApp lines start with "[", so only an object means JSON
        try:
            exports = telegram.parse_all(text, name, date_order)
        except TalkalikeError as error:  # its sentences say "this export ..."; name the file
            raise TalkalikeError(f"{label}: {error}") from None
    elif text.lstrip()[:200].lower().startswith(("<!doctype html", "<html")):
        raise TalkalikeError(f"{label} is an HTML page, perhaps Telegram's HTML export; export again with "
                             "Format: Machine-readable JSON and import result.json.")
    else:
        exports = [whatsapp.parse(text, name, date_order)]
    if len(exports) == 1 and not exports[0].messages:
        raise TalkalikeError(f"{label} holds no chat messages: nothing in it reads as a WhatsApp or Telegram export "
                             "entry. Give the file made by 'Export chat'.")
    return exports


def read_export(path: str | Path, date_order: str | None = None) -> ParsedExport:
    """One export file as a ParsedExport; a whole-account Telegram export must go through `read_exports`."""
    exports = read_exports(path, date_order)
    if len(exports) > 1:
        raise TalkalikeError(f"{path} holds {len(exports)} chats; `talkalike import` takes them all, each as its own chat.")
    return exports[0]


def _name_from_path(path: Path) -> str:
    """The chat name a file's own name gives: Telegram's folder name for result.json, WhatsApp's naming otherwise."""
    if path.name == "result.json":
        folder = path.resolve().parent.name
        return folder or "Telegram"
    return whatsapp.chat_name_from_filename(path.name)


def _chat_member(path: Path, data: bytes) -> tuple[str, bytes]:
    """The chat text inside a phone's zip: iOS `_chat.txt`, Android `WhatsApp Chat with X.txt`, or a `result.json`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as error:
        raise TalkalikeError(f"{path.name} looks like a zip but cannot be opened ({error}); share the export again.") from None
    texts = [n for n in names if n.lower().endswith(".txt") and not PurePosixPath(n).name.startswith("._")]
    # Shared documents ride along in a zip with media, so the chat file is picked by its export name first.
    for candidates in (
        [n for n in texts if PurePosixPath(n).name == "_chat.txt"],
        [n for n in texts if "whatsapp" in PurePosixPath(n).name.lower()],
        [n for n in names if PurePosixPath(n).name == "result.json"],
        texts,
    ):
        if len(candidates) == 1:
            try:
                return candidates[0], archive.read(candidates[0])
            except (zipfile.BadZipFile, RuntimeError, OSError) as error:
                raise TalkalikeError(f"{path.name}: cannot read {candidates[0]} ({error}).") from None
        if len(candidates) > 1:
            listed = ", ".join(candidates[:5])
            raise TalkalikeError(f"{path.name} holds several possible chat files ({listed}); unzip it and import one.")
    raise TalkalikeError(f"{path.name} holds no chat text file (_chat.txt or 'WhatsApp Chat with ….txt'); "
                         "is it a chat export?")


def _decode(data: bytes, label: str) -> str:
    """UTF-8 text (a leading BOM dropped), or one clear error for empty, binary or non-UTF-8 bytes."""
    if not data or data.isspace():  # as `not data.strip()`, without copying a large file
        raise TalkalikeError(f"{label} is empty; export the chat again.")
    if b"\x00" in data[:SNIFF_BYTES]:
        raise TalkalikeError(f"{label} is binary data, not a chat export; give the .txt, .zip or result.json.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TalkalikeError(f"{label} is not UTF-8 text (byte {error.start} is invalid); WhatsApp and Telegram export "
                             "UTF-8, so this is likely not an export, or it was re-saved in another encoding.") from None
    if _VISIBLE.search(text) is None:  # as `not text.strip(...)`, without copying a large text
        raise TalkalikeError(f"{label} is empty; export the chat again.")
    return text
