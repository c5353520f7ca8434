"""Near-duplicate indexes in a scratch SQLite file, so the export filters' memory stays flat.

The export filters (``mmevol.outputs.filters``) check each item against every item exported
before it. Keeping that state in Python dicts grows the process by about 2 KB per item;
here it lives in one temporary SQLite file (``Scratch``), removed when the export ends,
with a page cache of ``CACHE_KB``. Every table holds fixed-size keys: 64-bit digests of
MinHash bands, of normalised texts and of n-gram passages, or blocks of image hashes; the
names an item is reported by are read only when it matches.

Keys are 64-bit blake2b digests, so two different bands (or texts, or passages) share a
key with odds of about 1 in 10^19 per pair: far below the MinHash estimate's own error.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

SHINGLE = 5
"""Characters of the shingles whose MinHash stands for a question."""
NUM_PERM = 64
"""Permutations of each question's MinHash."""
BATCH = 5000
"""Rows written per transaction of the scratch file."""
CACHE_KB = 4096
"""The scratch connection's page cache, in KiB: the most the indexes keep in memory."""
CHUNK = 500
"""Keys per lookup query (SQLite caps a statement's parameters)."""


def digest(*parts: bytes) -> int:
    """Return a 64-bit blake2b digest of ``parts`` as the signed integer SQLite stores."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little", signed=True)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _unsigned(value: int) -> int:
    return value & ((1 << 64) - 1)


def _marks(keys: Sequence) -> str:
    return ", ".join("?" * len(keys))


class Scratch:
    """A temporary SQLite file for the filters' per-item state; removed when the block ends.

    ``with Scratch() as scratch:`` creates it in the temp folder (``TMPDIR``, or ``folder``).
    Writes go in transactions of ``batch`` rows with no journal and no fsync: nothing in
    it must survive a crash. ``Scratch.memory()`` gives an in-memory one, for small indexes.
    """

    def __init__(self, folder: Path | None = None, batch: int = BATCH):
        """Prepare a scratch file in ``folder`` (the temp folder when None)."""
        self.folder = folder
        self.batch = batch
        self.path: Path | None = None
        self.db: sqlite3.Connection | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._pending = 0
        self._tables = 0

    @classmethod
    def memory(cls) -> Scratch:
        """Return an open in-memory scratch database (nothing to remove)."""
        scratch = cls()
        scratch._connect(":memory:")
        return scratch

    def __enter__(self) -> Scratch:
        """Create the folder and the file, and open it."""
        self._dir = tempfile.TemporaryDirectory(prefix="mmevol-filters-", dir=self.folder)
        self.path = Path(self._dir.name) / "index.db"
        try:
            self._connect(str(self.path))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Close and remove the file, whether the block ended normally or not."""
        self.close()

    def close(self) -> None:
        """Close the database and remove its folder (again is harmless)."""
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _connect(self, target: str) -> None:
        # Autocommit mode: ``write`` opens and commits its own transactions.
        self.db = sqlite3.connect(target, isolation_level=None)
        self.db.execute("pragma journal_mode = off")
        self.db.execute("pragma synchronous = off")
        self.db.execute(f"pragma cache_size = -{CACHE_KB}")

    def table(self, kind: str, schema: str) -> str:
        """Create a table of this file from ``schema`` (``{t}`` names it) and return its name."""
        self._tables += 1
        name = f"{kind}{self._tables}"
        self.commit()
        self.db.execute(schema.format(t=name))
        return name

    def write(self, sql: str, rows: Sequence[Sequence]) -> None:
        """Run ``sql`` for each of ``rows``, committing every ``batch`` rows."""
        if not self._pending:
            self.db.execute("begin")
        self.db.executemany(sql, rows)
        self._pending += len(rows) or 1
        if self._pending >= self.batch:
            self.commit()

    def commit(self) -> None:
        """Commit the writes pending (lookups see them before, on this connection)."""
        if self._pending:
            self.db.execute("commit")
            self._pending = 0

    def any_key(self, table: str, keys: Sequence[int]) -> bool:
        """Return whether ``table`` (keyed by ``key``) holds any of ``keys``."""
        for n in range(0, len(keys), CHUNK):
            chunk = keys[n : n + CHUNK]
            sql = f"select 1 from {table} where key in ({_marks(chunk)}) limit 1"
            if self.db.execute(sql, chunk).fetchone():
                return True
        return False


class _ItemIndex:
    """Named items, numbered in the order indexed, each found again through its keys.

    Two scratch tables: the keys (``key``, ``item``), and the items: ``item`` first, then
    what the subclass keeps of each (its ``ITEMS`` schema), ``name`` last.
    """

    KEYS = "create table {t} (key integer, item integer, primary key (key, item)) without rowid"
    ITEMS = "create table {t} (item integer primary key, name text)"

    def __init__(self, kind: str, scratch: Scratch | None):
        """Create the two tables of ``kind`` in ``scratch`` (an in-memory one when None)."""
        self.scratch = scratch or Scratch.memory()
        self._key_table = self.scratch.table(f"{kind}_keys", self.KEYS)
        self._item_table = self.scratch.table(f"{kind}_items", self.ITEMS)
        self.count = 0

    def __len__(self) -> int:
        """Return the number of items indexed."""
        return self.count

    def _index(self, keys: Iterable[int], *row: object) -> None:
        """Add the next item (``row``: its columns after ``item``) under ``keys``."""
        self.count += 1
        item = self.count
        marks = _marks(row)
        self.scratch.write(f"insert into {self._item_table} values (?, {marks})", [(item, *row)])
        self.scratch.write(
            f"insert or ignore into {self._key_table} values (?, ?)", [(key, item) for key in keys]
        )


class HashIndex(_ItemIndex):
    """Find 64-bit hashes within a Hamming distance, by exact match on one of d+1 bit blocks.

    Two hashes at most ``d`` bits apart agree exactly on at least one of ``d + 1`` blocks
    (pigeonhole), so each lookup compares only the hashes sharing a block. A block's key
    is its number in the high bits above its value (blocks of 32 bits or fewer; the single
    block of distance 0 is the hash itself), so keys never collide.
    """

    ITEMS = "create table {t} (item integer primary key, hash integer, name text)"

    def __init__(self, distance: int, scratch: Scratch | None = None):
        """Index hashes that count as the same within ``distance`` differing bits."""
        self.distance = distance
        count = distance + 1
        edges = [round(64 * n / count) for n in range(count + 1)]
        self.blocks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
        super().__init__("image", scratch)

    def _keys(self, value: int) -> list[int]:
        return [
            _signed((n << 32) + ((value >> shift) & mask))
            for n, (shift, mask) in enumerate(self.blocks)
        ]

    def find(self, value: int) -> str | None:
        """Return the name of the first indexed hash within the distance of ``value``, if any."""
        return self._first(value, self._keys(value))

    def add(self, value: int, name: str) -> None:
        """Index ``value`` under ``name``."""
        self._add(value, self._keys(value), name)

    def find_or_add(self, value: int, name: str) -> str | None:
        """Return ``find(value)``, and index ``value`` under ``name`` when that found none."""
        keys = self._keys(value)
        found = self._first(value, keys)
        if found is None:
            self._add(value, keys, name)
        return found

    def _first(self, value: int, keys: list[int]) -> str | None:
        if not self.count:
            return None
        found = self.scratch.db.execute(
            f"select item, hash from {self._item_table} where item in"
            f" (select item from {self._key_table} where key in ({_marks(keys)})) order by item",
            keys,
        ).fetchall()
        for item, other in found:
            if (_unsigned(other) ^ value).bit_count() <= self.distance:
                sql = f"select name from {self._item_table} where item = ?"
                return self.scratch.db.execute(sql, [item]).fetchone()[0]
        return None

    def _add(self, value: int, keys: list[int], name: str) -> None:
        self._index(keys, _signed(value), name)


class QuestionIndex(_ItemIndex):
    """Near-duplicate questions: the LSH bands of a MinHash of character 5-grams, in SQLite.

    datasketch makes the MinHash and picks the band layout (``MinHashLSH`` for the
    threshold); each band is kept as a digest key. A question near-duplicates every indexed
    one sharing a band, as ``MinHashLSH.query`` finds them (the same text shares them all),
    and ``find`` names the first indexed. Similarity 1 keeps a digest of the text alone.
    """

    def __init__(self, threshold: float, scratch: Scratch | None = None):
        """Index questions that count as the same from Jaccard similarity ``threshold``."""
        from datasketch import MinHashLSH

        # Similarity 1 asks for the same text: its digest alone answers.
        near = threshold < 1
        self.bands = MinHashLSH(threshold=threshold, num_perm=NUM_PERM).hashranges if near else None
        super().__init__("question", scratch)

    def signature(self, text: str):
        """Return the MinHash of a normalised question (None at similarity 1: not needed)."""
        return None if self.bands is None else signature(text)

    def keys(self, text: str, sig=None) -> list[int]:
        """Return the keys of a normalised question: one per band, or its text's digest."""
        if self.bands is None:
            return [digest(text.encode())]
        values = (sig if sig is not None else signature(text)).hashvalues
        return [
            digest(n.to_bytes(2, "little"), values[start:end].tobytes())
            for n, (start, end) in enumerate(self.bands)
        ]

    def find(self, text: str, sig=None) -> str | None:
        """Return the name of the first indexed near-duplicate of ``text`` (normalised), if any."""
        return self._first(self.keys(text, sig))

    def add(self, text: str, name: str, sig=None) -> None:
        """Index ``text`` (normalised) under ``name``."""
        self._add(self.keys(text, sig), name)

    def find_or_add(self, text: str, name: str, sig=None) -> str | None:
        """Return ``find(text)``, and index ``text`` under ``name`` when that found none."""
        keys = self.keys(text, sig)
        found = self._first(keys)
        if found is None:
            self._add(keys, name)
        return found

    def _first(self, keys: list[int]) -> str | None:
        if not self.count:
            return None
        row = self.scratch.db.execute(
            f"select name from {self._item_table} where item ="
            f" (select min(item) from {self._key_table} where key in ({_marks(keys)}))",
            keys,
        ).fetchone()
        return row[0] if row else None

    def _add(self, keys: list[int], name: str) -> None:
        self._index(keys, name)


@cache
def _template():
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM)


def signature(text: str):
    """Return the MinHash (datasketch) of a normalised question's character 5-grams.

    Every index shares one set of permutations, so one signature serves the benchmark
    check and the dedup index alike.
    """
    from datasketch import MinHash

    template = _template()
    grams = {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
    sig = MinHash(num_perm=NUM_PERM, permutations=template.permutations, scheme=template.scheme)
    sig.update_batch([g.encode() for g in grams])
    return sig


class KeySet:
    """A set of 64-bit keys (the benchmark questions' n-gram passages), in SQLite."""

    SCHEMA = "create table {t} (key integer primary key) without rowid"

    def __init__(self, scratch: Scratch | None = None):
        """Create the empty set."""
        self.scratch = scratch or Scratch.memory()
        self._table = self.scratch.table("keys", self.SCHEMA)
        self.count = 0

    def __len__(self) -> int:
        """Return how many keys were added (repeats included)."""
        return self.count

    def update(self, keys: Iterable[int]) -> None:
        """Add ``keys``."""
        rows = [(key,) for key in keys]
        if rows:
            self.count += len(rows)
            self.scratch.write(f"insert or ignore into {self._table} values (?)", rows)

    def intersects(self, keys: Sequence[int]) -> bool:
        """Return whether any of ``keys`` is in the set."""
        return bool(self.count) and self.scratch.any_key(self._table, keys)


class HashCache:
    """Each image file's hash by name, so an image several samples share is hashed once."""

    SCHEMA = "create table {t} (name text primary key, hash integer) without rowid"

    def __init__(self, scratch: Scratch | None = None):
        """Create the empty cache."""
        self.scratch = scratch or Scratch.memory()
        self._table = self.scratch.table("image_hashes", self.SCHEMA)

    def get(self, name: str, compute: Callable[[], int | None]) -> int | None:
        """Return image ``name``'s hash, from ``compute()`` the first time (None: unreadable)."""
        row = self.scratch.db.execute(
            f"select hash from {self._table} where name = ?", [name]
        ).fetchone()
        if row is not None:
            return None if row[0] is None else _unsigned(row[0])
        value = compute()
        self.scratch.write(
            f"insert into {self._table} values (?, ?)",
            [(name, None if value is None else _signed(value))],
        )
        return value
