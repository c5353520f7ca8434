"""Stream seed samples (JSON list, JSONL, or a folder of JSON files) and validate them.

Every row gets one key, from ``row_key`` alone: its ``hash_id``, else the method's computed
one, else ``#row-<index>``. A seed's ``hash_id`` may not start with ``#``, so the key of a row
without one can never be a real sample's.

Reading never stops at a bad row: a syntax error, a byte that is not UTF-8 or a seed-folder
entry that is not a regular file fails that row (with its number and the problem) and the
rows after it are still read.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from mmevol.graph.items import QAItem, render_errors
from mmevol.graph.state import Box, InputState

UNKEYED = "#"
"""The first character of the key of a row without one; refused at the start of a hash_id."""
BOX_TOLERANCE = 0.01
"""How far outside 0..1 a box coordinate may lie (rounding) before the box is left out."""
BOM = b"\xef\xbb\xbf"


class SeedSample(BaseModel):
    """One seed record as the method defines it; unknown fields are kept for the export."""

    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    image: str
    conversations_v0: list[dict[str, Any]] = Field(
        validation_alias=AliasChoices("conversations_v0", "conversations")
    )
    """The Q&A items as given (plain LLaVA seeds call them ``conversations``); each is
    validated on its own in ``prepare``."""
    caption: str = ""
    det: list[Any] = []
    """The boxes as given; each is checked on its own in ``prepare``."""
    hash_id: str | None = None

    @field_validator("image")
    @classmethod
    def _image_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("hash_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(UNKEYED):
            raise ValueError(f"must not start with {UNKEYED!r} (kept for rows without a key)")
        return value

    @field_validator("conversations_v0", mode="before")
    @classmethod
    def _turns_to_items(cls, value: Any) -> Any:
        if (
            isinstance(value, list)
            and value
            and all(isinstance(t, dict) and "from" in t and "value" in t for t in value)
        ):
            return turns_to_items(value)
        return value

    @field_validator("conversations_v0")
    @classmethod
    def _some_items(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not value:
            raise ValueError("holds no Q&A item")
        return value

    @field_validator("caption", mode="before")
    @classmethod
    def _caption_text(cls, value: Any) -> Any:
        if value is None or value == []:
            return ""
        if isinstance(value, list):
            # The two-turn form: the caption is the answer turn.
            turns = [t for t in value if isinstance(t, dict) and t.get("from") == "gpt"]
            if not turns:
                raise ValueError("a caption list needs a 'gpt' turn")
            return str(turns[-1].get("value", ""))
        return value

    @field_validator("det", mode="before")
    @classmethod
    def _boxes(cls, value: Any) -> Any:
        return [] if value is None else value


def turns_to_items(turns: list[dict]) -> list[dict]:
    """Convert LLaVA human/gpt turns into Q&A items, dropping the ``<image>`` token."""
    items = []
    pending: str | None = None
    for n, turn in enumerate(turns):
        role, text = turn["from"], str(turn["value"])
        if role == "human":
            if pending is not None:
                raise ValueError(f"turn {n} is a second human turn in a row")
            pending = text.replace("<image>", "").strip()
        elif role == "gpt":
            if pending is None:
                raise ValueError(f"turn {n} is a gpt turn with no question before it")
            items.append({"question": pending, "answer": text})
            pending = None
        else:
            raise ValueError(f"turn {n} has unknown role {role!r}")
    if pending is not None:
        raise ValueError("the last human turn has no answer")
    return items


@dataclass
class SeedRow:
    """One row of a seed file: a valid sample, or the reason it is not."""

    index: int
    hash_id: str
    """The row's key, from ``row_key``; ``#row-<index>`` for a row too broken to have one."""
    source_id: str | None
    raw: dict | None
    """The row as given, for the export (less any box left out)."""
    sample: InputState | None = None
    error: str | None = None
    skipped_items: list[tuple[Any, str]] = field(default_factory=list)
    """Seed items and boxes left out of the evolution (entry, reason); the sample runs
    without them."""


def hash_id_for(index: int, image: str) -> str:
    """Return the method's unique key of a sample."""
    return f"{index}_{image.replace('/', '_')}"


def row_key(index: int, raw: Any) -> str:
    """Return the key a row is known by everywhere, from the row as parsed (None if unread).

    It is the row's ``hash_id`` when it gives a valid one, else the method's computed one
    when it has an image, else ``#row-<index>``: a form no valid hash_id can take.
    """
    if isinstance(raw, dict):
        given = raw.get("hash_id")
        if isinstance(given, str) and given:
            if not given.startswith(UNKEYED):
                return given
        elif given in (None, "") and isinstance(raw.get("image"), str) and raw["image"].strip():
            return hash_id_for(index, raw["image"])
    return f"{UNKEYED}row-{index}"


def shard_index(key: str, count: int) -> int:
    """Return the shard (1 to ``count``) a row's key falls in.

    The first 8 bytes of the SHA-256 of the key (UTF-8), modulo ``count``: the same on every
    machine and Python version (unlike ``hash()``, salted per process).
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def shard_rows(
    rows: Iterator[tuple[int, Any, str | None]], shard: tuple[int, int] | None
) -> Iterator[tuple[int, Any, str | None]]:
    """Keep the raw rows (as ``raw_rows`` yields them) whose key falls in shard (I, N).

    A row is sharded by the key it is known by (``row_key``), so a row rejected before it
    starts (``#row-N``) belongs to one shard too, and two rows claiming one hash_id go to
    the same shard, which sees the clash: N shards cover every row exactly once.
    """
    if shard is None:
        yield from rows
        return
    index, count = shard
    for row in rows:
        if shard_index(row_key(row[0], row[1] if row[2] is None else None), count) == index:
            yield row


def fingerprint(path: Path) -> str:
    """Return a digest of a seed's content (a folder: its ``*.json`` names and contents).

    Two machines holding the same seed at different paths get the same fingerprint, which
    is how ``mmevol merge`` tells that shards ran one seed.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            if not stat.S_ISREG(file.stat().st_mode):  # never open a FIFO or a device
                raise _NotAFile()
            with open(file, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except (OSError, _NotAFile):
            digest.update(b"\0unreadable")
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def prepare(index: int, raw: Any) -> SeedRow:
    """Validate one raw row and turn it into the graph's input."""
    key = row_key(index, raw)
    if not isinstance(raw, dict):
        return SeedRow(index, key, None, None, error=f"row {index}: not a JSON object")
    source_id = None if raw.get("id") is None else str(raw.get("id"))
    where = f"row {index} (id {source_id})"
    try:
        seed = SeedSample.model_validate(raw)
    except ValidationError as err:
        return SeedRow(
            index, key, source_id, raw, error=f"{where}: invalid sample: {render_errors(err)}"
        )
    # A bad box (NaN, pixel coordinates, flipped corners) is a hint gone wrong, not a bad
    # sample: it is left out, of the export too, and recorded.
    boxes: list[Box] = []
    kept_det: list[Any] = []
    skipped: list[tuple[Any, str]] = []
    for n, entry in enumerate(seed.det):
        box, problem = check_box(entry)
        if box is None:
            skipped.append((json_safe(entry), f"box det[{n}] left out: {problem}"))
        else:
            boxes.append(box)
            kept_det.append(entry)
    if len(kept_det) != len(seed.det):
        raw = {**raw, "det": kept_det}
    if (bad := non_finite(raw)) is not None:
        return SeedRow(index, key, source_id, raw, error=f"{where}: {bad}, which JSON cannot hold")
    # One bad item (the authors' seed has a few with an empty question) should not cost
    # the sample its other items: it is left out of the evolution and recorded.
    items: list[QAItem] = []
    for n, entry in enumerate(seed.conversations_v0):
        try:
            items.append(QAItem.model_validate(entry))
        except ValidationError as err:
            skipped.append((entry, f"seed item {n} left out: {render_errors(err)}"))
    if not items:
        reason = next(r for _, r in skipped if r.startswith("seed item"))
        return SeedRow(index, key, source_id, raw, error=f"{where}: no usable Q&A item ({reason})")
    sample = InputState(
        hash_id=key,
        image=seed.image,
        caption=seed.caption,
        boxes=boxes,
        seed_items=items,
    )
    return SeedRow(index, key, source_id, raw, sample=sample, skipped_items=skipped)


def check_box(entry: Any) -> tuple[Box | None, str | None]:
    """Return a seed box, or None and why it cannot be used."""
    try:
        box = Box.model_validate(entry)
    except ValidationError as err:
        return None, render_errors(err)
    b = box.bbox
    if len(b) != 4:
        return None, f"bbox must have 4 numbers, has {len(b)}"
    if any(not math.isfinite(v) for v in b):
        return None, f"bbox {b} holds a value that is not a finite number"
    if any(v < -BOX_TOLERANCE or v > 1 + BOX_TOLERANCE for v in b):
        return None, f"bbox {b} is outside 0..1 (boxes are fractions of the image size)"
    if b[0] > b[2]:
        return None, f"bbox {b} has x1 > x2"
    if b[1] > b[3]:
        return None, f"bbox {b} has y1 > y2"
    return box, None


def non_finite(value: Any) -> str | None:
    """Say where a parsed row holds NaN or an infinity (which JSON cannot write), or None."""
    try:
        json.dumps(value, allow_nan=False)
        return None
    except ValueError:
        pass
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            name = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
            return f"{path or 'the row'} is {name}"
        if isinstance(v, dict):
            stack += [(f"{path}.{k}" if path else str(k), x) for k, x in reversed(v.items())]
        elif isinstance(v, list):
            stack += [(f"{path}[{n}]", x) for n, x in reversed(list(enumerate(v)))]
    return None


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN and infinities written as text, so JSON can hold it."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def read_seed(path: Path) -> Iterator[SeedRow]:
    """Yield every row of a seed, streamed so that a 449 MB seed never sits in memory."""
    for index, raw, error in raw_rows(Path(path)):
        yield seed_row(index, raw, error)


def seed_row(index: int, raw: Any, error: str | None) -> SeedRow:
    """Turn one row as read (or the reason it could not be read) into a ``SeedRow``."""
    if error is not None:
        return SeedRow(index, row_key(index, None), None, None, error=f"row {index}: {error}")
    return prepare(index, raw)


def count_rows(path: Path) -> int | None:
    """Count a seed's rows cheaply when the format allows it (JSONL, folder), else None."""
    path = Path(path)
    if path.is_dir():
        return sum(1 for _ in path.glob("*.json"))
    if _first_char(path) == "[":
        return None
    with path.open("rb") as fh:
        return sum(
            1
            for n, line in enumerate(fh)
            if (line[3:] if n == 0 and line.startswith(BOM) else line).strip()
        )


def _first_char(path: Path) -> str:
    """Return the first character of a seed file past a BOM and whitespace ("" if none)."""
    with path.open("rb") as fh:
        head = fh.read(3)
        if head != BOM:
            fh.seek(0)
        while chunk := fh.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


def raw_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, parsed row, None), or (index, None, why it cannot be read), streamed."""
    if not path.exists():
        raise FileNotFoundError(f"seed {str(path)!r} does not exist")
    if path.is_dir():
        yield from _folder_rows(path)
    elif _first_char(path) == "[":
        with path.open("rb") as fh:
            yield from _ListReader(fh).rows()
    else:
        yield from _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with path.open("rb") as fh:
        index = 0
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line.strip():
                continue
            try:
                yield index, json.loads(line.decode("utf-8")), None
            except UnicodeDecodeError as err:
                yield index, None, _not_utf8(line[err.start], f"column {err.start + 1}")
            except json.JSONDecodeError as err:
                yield index, None, f"invalid JSON ({err})"
            index += 1


def _not_utf8(byte: int, where: str) -> str:
    return f"not valid UTF-8 (byte 0x{byte:02x} at {where})"


_KINDS = {
    stat.S_IFDIR: "a folder, not a file",
    stat.S_IFIFO: "not a regular file (a FIFO)",
    stat.S_IFSOCK: "not a regular file (a socket)",
    stat.S_IFCHR: "not a regular file (a device)",
    stat.S_IFBLK: "not a regular file (a device)",
}


def _folder_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    for index, file in enumerate(sorted(path.glob("*.json"))):
        try:
            data = _read_regular(file)
        except _NotAFile as err:
            yield index, None, f"{file.name} is {err}"
            continue
        except OSError as err:
            yield index, None, f"{file.name} cannot be read ({err.strerror or err})"
            continue
        if data.startswith(BOM):
            data = data[len(BOM) :]
        try:
            yield index, json.loads(data.decode("utf-8")), None
        except UnicodeDecodeError as err:
            yield (
                index,
                None,
                f"{file.name} is " + _not_utf8(data[err.start], f"offset {err.start}"),
            )
        except json.JSONDecodeError as err:
            yield index, None, f"{file.name} is not valid JSON ({err})"


class _NotAFile(Exception):
    pass


def _read_regular(file: Path) -> bytes:
    """Read a regular file; never open (and so never hang on) a FIFO or a device."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        if file.is_symlink():
            raise _NotAFile("a link to a file that does not exist") from None
        raise
    if not stat.S_ISREG(mode):
        raise _NotAFile(_KINDS.get(stat.S_IFMT(mode), "not a regular file"))
    # Non-blocking, in case the file was swapped for a FIFO since: its open cannot hang.
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotAFile("not a regular file")
        return fh.read()


_bad_bytes_seen = 0


def _escape_bad_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    """Keep bytes that are not UTF-8 as lone surrogates, and count that some were met."""
    global _bad_bytes_seen
    _bad_bytes_seen += 1
    return codecs.lookup_error("surrogateescape")(err)


codecs.register_error("mmevol-seed", _escape_bad_bytes)

_WS = re.compile(r"[ \t\n\r]*")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_DECODER = json.JSONDecoder()
_CHUNK = 1 << 20
# A decode error this close to the end of what is read may only mean the row goes on.
_TAIL = 16


class _ListReader:
    """Read a JSON list row by row, and go on past a row that breaks the file.

    Each row is decoded on its own (``json``'s raw_decode, from a buffer of about a chunk
    plus the row). Bytes that are not UTF-8 are kept as lone surrogates, so that they fail
    only the row holding them. After a syntax error, reading resumes at the next ``{`` that
    decodes as an object with an ``image`` and is followed by ``,`` or ``]``.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder("utf-8")("mmevol-seed")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.bad_bytes = False
        """Whether a byte that is not UTF-8 was met (then rows are searched for them)."""
        self.line = 1
        """The line number of ``buf[0]``."""
        self.column = 1
        """The column of ``buf[0]``."""

    def rows(self) -> Iterator[tuple[int, Any, str | None]]:
        self._more()
        if self.buf.startswith("\ufeff"):
            self.pos = 1
        self._skip_ws()
        self.pos += 1  # the "[", as _first_char found
        self._skip_ws()
        if self._peek() == "]":
            return
        index = 0
        while True:
            self._compact()
            start = self.pos
            try:
                value, end = self._decode(start)
            except json.JSONDecodeError as err:
                reason = self._broken(start, err.pos, err.msg)
                found = self._resync(start + 1)
                yield index, None, reason + self._resumed(found)
                index += 1
                if not found:
                    return
                continue
            if self.bad_bytes and (bad := _NOT_UTF8.search(self.buf, start, end)) is not None:
                yield index, None, _not_utf8(ord(bad.group()) - 0xDC00, self._where(bad.start()))
            else:
                yield index, value, None
            index += 1
            self.pos = end
            self._skip_ws()
            following = self._peek()
            if following == ",":
                self.pos += 1
                self._skip_ws()
                if self._peek() == "]":  # a trailing comma loses no row
                    return
            elif following == "]":
                return
            elif following == "":
                yield index, None, "the JSON list ends without its closing ']' (cut short?)"
                return
            else:
                bad_at = self.pos
                reason = self._broken(bad_at, bad_at, "expecting ',' before this row")
                found = self._resync(bad_at + 1)
                yield index, None, reason + self._resumed(found)
                index += 1
                if not found:
                    return

    # -- reading --------------------------------------------------------------------------

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(_CHUNK)
        self.eof = not data
        seen = _bad_bytes_seen
        self.buf += self.decoder.decode(data, final=self.eof)
        self.bad_bytes = self.bad_bytes or _bad_bytes_seen != seen
        return not self.eof

    def _compact(self) -> None:
        """Forget what is read and done with, so that memory stays flat."""
        if self.pos > _CHUNK:
            self._drop(self.pos)

    def _drop(self, upto: int) -> None:
        gone = self.buf[:upto]
        newlines = gone.count("\n")
        self.line += newlines
        self.column = (self.column if not newlines else 1) + upto - (gone.rfind("\n") + 1)
        self.buf = self.buf[upto:]
        self.pos -= upto

    def _peek(self) -> str:
        while self.pos >= len(self.buf):
            if not self._more():
                return ""
        return self.buf[self.pos]

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return

    def _decode(self, at: int) -> tuple[Any, int]:
        """Decode the value starting at ``at``, reading on while it may go on."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, at)
            except json.JSONDecodeError as err:
                near_end = err.pos >= len(self.buf) - _TAIL or err.msg.startswith("Unterminated")
                if near_end and self._more():
                    continue
                raise
            # A number could go on in the next chunk.
            if end >= len(self.buf) and self._more():
                continue
            return value, end

    def _resync(self, start: int) -> bool:
        """Move to the next row that decodes whole after a broken one; False if none."""
        at = start
        while True:
            if at > _CHUNK:
                self.pos = at
                self._drop(at)
                at = 0
            brace = self.buf.find("{", at)
            if brace < 0:
                at = len(self.buf)
                if not self._more():
                    self.pos = len(self.buf)
                    return False
                continue
            try:
                value, end = self._decode(brace)
            except json.JSONDecodeError:
                at = brace + 1
                continue
            if isinstance(value, dict) and "image" in value:
                self.pos = end
                self._skip_ws()
                if self._peek() in (",", "]", ""):
                    self.pos = brace
                    return True
            at = brace + 1

    # -- saying where ---------------------------------------------------------------------

    def _where(self, at: int) -> str:
        newlines = self.buf.count("\n", 0, at)
        column = at - (self.buf.rfind("\n", 0, at) + 1) + (1 if newlines else self.column)
        return f"line {self.line + newlines}, column {column}"

    def _broken(self, start: int, at: int, msg: str) -> str:
        if at < len(self.buf) and _NOT_UTF8.match(self.buf[at]):
            msg = _not_utf8(ord(self.buf[at]) - 0xDC00, "this place")
        first_line = self._where(start).split(",")[0]
        return f"the JSON list is broken at this row ({first_line}): {msg} at {self._where(at)}"

    def _resumed(self, found: bool) -> str:
        if found:
            return f"; reading went on at the next row found, {self._where(self.pos)}"
        return "; no row after it could be read"
