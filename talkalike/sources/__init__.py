"""Chat export sources, one module each, and `read_export`, which opens any export file and picks its source.

A source module has `parse(text, name, date_order=None) -> ParsedExport`. Files are recognised by their bytes, not their
extension: a zip (as shared from the phone), a Telegram `result.json`, else a WhatsApp text export.
Try it: `talkalike parse 'WhatsApp Chat with Maya.zip' | head`.
"""

import codecs
import json
import math
import os
import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from talkalike.errors import TalkalikeError
from talkalike.message import ParsedExport
from talkalike.sources import telegram, whatsapp

SOURCES = {"whatsapp": whatsapp.parse, "telegram": telegram.parse}

ZIP_MAGIC = b"PK\x03\x04"
# The start of a file is enough to tell text from binary: text exports never hold NUL bytes.
SNIFF_BYTES = 8192
_VISIBLE = re.compile("[^\ufeff \t\r\n]")
_CHUNK = 1 << 20  # bytes read at once: a device or pipe that never ends is stopped at the cap, not at memory's end

# The largest chat text read, in MiB. A million-message export is about 100 MiB, so the default leaves room for ten;
# past it the file is refused rather than read until memory runs out (a zip of 7 MB can hold 2 GB of text).
MAX_EXPORT_ENV = "TALKALIKE_MAX_EXPORT_MB"
MAX_EXPORT_MB = 1024


def max_export_bytes() -> int:
    """The size cap for one chat text: $TALKALIKE_MAX_EXPORT_MB, else MAX_EXPORT_MB."""
    raw = os.environ.get(MAX_EXPORT_ENV, "").strip()
    if not raw:
        return MAX_EXPORT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not math.isfinite(mb) or mb <= 0:
        raise TalkalikeError(f"${MAX_EXPORT_ENV} must be a positive number of MiB, e.g. {MAX_EXPORT_MB}; it is {raw!r}.")
    return int(mb * (1 << 20))


def read_exports(path: str | Path, date_order: str | None = None) -> list[ParsedExport]:
    """Every chat in one export file: one for WhatsApp and single-chat Telegram, several for a whole Telegram account."""
    path = Path(path)
    cap = max_export_bytes()
    if not path.exists():
        raise TalkalikeError(f"{path}: no such file.")
    if path.is_dir() and (path / "result.json").is_file():
        path = path / "result.json"  # Telegram Desktop's export folder
    elif path.is_dir():
        raise TalkalikeError(f"{path} is a folder; give the export file inside it (the .txt, .zip or result.json).")
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
            if head == ZIP_MAGIC and f.seekable():
                # zipfile reads the archive in place: the photos beside the chat are never loaded
                member, data = _chat_member(path, f, cap)
                name = whatsapp.chat_name_from_filename(path.name)
                if PurePosixPath(member).name == "result.json":
                    name = path.stem
                label = f"{path.name} ({member})"
            else:
                name = _name_from_path(path)
                label = path.name
                if path.is_file() and path.stat().st_size > cap:
                    raise _too_big(label, cap)
                data = _read_capped(f, head, label, cap)
    except OSError as error:
        raise TalkalikeError(f"{path}: cannot read it ({error.strerror or error}).") from None
    text = _decode(data, label)
    del data  # a large export's bytes need not stay beside its text while it is parsed
    stripped = text.lstrip()
    if stripped.startswith("{"):  # iOS WhatsApp lines start with "[", so only an object means JSON
        try:
            exports = telegram.parse_all(text, name, date_order)
        except TalkalikeError as error:  # its sentences say "this export ..."; name the file
            raise TalkalikeError(f"{label}: {error}") from None
    elif stripped[:200].lower().startswith(("<!doctype html", "<html")):
        raise TalkalikeError(f"{label} is an HTML page, perhaps Telegram's HTML export; export again with "
                             "Format: Machine-readable JSON and import result.json.")
    else:
        try:
            exports = [whatsapp.parse(text, name, date_order)]
        except TalkalikeError:
            if _is_json(stripped):
                raise TalkalikeError(f"{label} is JSON but not a Telegram export: it holds a "
                                     f"{_json_kind(stripped)}, and Telegram Desktop's result.json is an object "
                                     "with `messages` or `chats`.") from None
            raise
    if len(exports) == 1 and not exports[0].messages:
        raise TalkalikeError(f"{label} holds no chat messages: nothing in it reads as a WhatsApp or Telegram export "
                             "entry. Give the file made by 'Export chat'.")
    return exports


def _is_json(text: str) -> bool:
    """Whether a text that failed as WhatsApp is a JSON document (an array, say), to name it so."""
    if not text.startswith(("[", '"')) and not text[:1].isdigit() and not text.startswith(("true", "false", "null")):
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _json_kind(text: str) -> str:
    return {"[": "list (a JSON array)", '"': "string"}.get(text[:1], "single value")


def _read_capped(f, head: bytes, label: str, cap: int) -> bytes:
    """The rest of an open file after `head`, in chunks: binary data is refused from its first chunk, and reading
    stops past `cap` bytes, so /dev/zero or an endless pipe fail at once instead of filling memory."""
    chunks = [head]
    size = len(head)
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if len(chunks) == 2:
            _sniff(head + chunk[:SNIFF_BYTES], label)
        if size > cap:
            raise _too_big(label, cap)
    return b"".join(chunks)


def _too_big(label: str, cap: int) -> TalkalikeError:
    return TalkalikeError(f"{label} holds more than {cap / (1 << 20):,.0f} MiB of chat text, more than any real "
                          f"export; if it is one, raise the limit with {MAX_EXPORT_ENV}=MIB.")


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


def _chat_member(path: Path, f, cap: int) -> tuple[str, bytes]:
    """The chat text inside a phone's zip: iOS `_chat.txt`, Android `WhatsApp Chat with X.txt`, or a `result.json`."""
    f.seek(0)
    try:
        archive = zipfile.ZipFile(f)
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
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
            return candidates[0], _read_member(path, archive, candidates[0], cap)
        if len(candidates) > 1:
            listed = ", ".join(candidates[:5])
            raise TalkalikeError(f"{path.name} holds several possible chat files ({listed}); unzip it and import one.")
    raise TalkalikeError(f"{path.name} holds no chat text file (_chat.txt or 'WhatsApp Chat with ….txt'); "
                         "is it a chat export?")


def _read_member(path: Path, archive: zipfile.ZipFile, member: str, cap: int) -> bytes:
    """One member's bytes, refused before any is inflated when it says it is larger than `cap`. zipfile stops at the
    declared size (and then fails the CRC), so a member that lies about its size cannot grow past the cap either."""
    label = f"{path.name} ({member})"
    info = archive.getinfo(member)
    if info.file_size > cap:
        raise _too_big(label, cap)
    try:
        with archive.open(info) as stream:
            head = stream.read(len(ZIP_MAGIC))
            return _read_capped(stream, head, label, cap)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as error:
        # zlib.error: a damaged deflate stream; RuntimeError: an encrypted member; NotImplementedError: a method
        # zipfile lacks
        raise TalkalikeError(f"{path.name}: cannot read {member}, the zip is damaged or encrypted ({error}); "
                             "share the export again.") from None


def _sniff(head: bytes, label: str) -> None:
    """Refuse binary data and BOM-less UTF-16 from a file's first bytes."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return
    if b"\x00" in head[:SNIFF_BYTES]:
        # UTF-16 of mostly Latin text: NUL in nearly every other byte and almost nowhere else
        even, odd = head[0:SNIFF_BYTES:2], head[1:SNIFF_BYTES:2]
        share = lambda half: half.count(0) / max(len(half), 1)  # noqa: E731
        if min(share(even), share(odd)) < 0.1 and max(share(even), share(odd)) > 0.9:
            raise TalkalikeError(f"{label} looks like UTF-16 text without a byte-order mark; talkalike reads UTF-8 and "
                                 "UTF-16 with a BOM, so save it again as UTF-8 (or export the chat again).")
        raise TalkalikeError(f"{label} is binary data, not a chat export; give the .txt, .zip or result.json.")


def _decode(data: bytes, label: str) -> str:
    """UTF-8 text, or UTF-16 with a BOM (a leading BOM dropped), or one clear error for empty, binary or
    undecodable bytes."""
    if not data or data.isspace():  # as `not data.strip()`, without copying a large file
        raise TalkalikeError(f"{label} is empty; export the chat again.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Windows tools re-save text as "Unicode", which is UTF-16 with a BOM
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise TalkalikeError(f"{label} starts as UTF-16 text but cannot be decoded as UTF-16 ({error.reason} at "
                                 f"byte {error.start}); save it again as UTF-8.") from None
        if "\x00" in text:
            raise TalkalikeError(f"{label} is UTF-16 text holding binary data (NUL characters); give the chat "
                                 "export itself.")
        if text.startswith("\ufeff"):
            text = text[1:]
    else:
        _sniff(data, label)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise TalkalikeError(f"{label} is not UTF-8 text (byte {error.start} is invalid); WhatsApp and Telegram "
                                 "export UTF-8, so this is likely not an export, or it was re-saved in another "
                                 "encoding.") from None
    if _VISIBLE.search(text) is None:  # as `not text.strip(...)`, without copying a large text
        raise TalkalikeError(f"{label} is empty; export the chat again.")
    return text
