"""Export-time quality filters: leave out items by gate verdict, near-duplicates, benchmark leaks.

Gates score every item during the run (``--gates``); these filters decide at export time
what to leave out, and count each item left out under the first filter that caught it,
in this order: ``--require-image`` (the blind gate answered it without the image),
``--min-agreement`` (the second judge agreed less), ``--decontaminate`` (its question
overlaps a benchmark question, or its image matches a benchmark image), ``--dedup`` (its
image or question near-duplicates one exported before it, in seed order). A sample whose
image is a duplicate or a benchmark image is left out whole.

Samples stream through one at a time. What the checks remember of the items before (each
exported question's MinHash LSH bands, each image's perceptual hash, the benchmark's
questions and passages) lives in a scratch SQLite file (``mmevol.outputs.nearindex``) in
the temp folder, removed when the export ends; memory stays flat however many items.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmevol.outputs.nearindex import (
    HashCache,
    HashIndex,
    KeySet,
    QuestionIndex,
    Scratch,
    digest,
    signature,
)
from mmevol.store.results import Store

IMAGE_DISTANCE = 4
"""Default Hamming distance (of 64 bits) under which two perceptual hashes are the same image."""
QUESTION_SIMILARITY = 0.8
"""Default Jaccard similarity (of character 5-grams) from which two questions are duplicates."""
CONTAMINATION_SIMILARITY = 0.7
"""Default Jaccard similarity from which a question matches a benchmark question."""
CONTAMINATION_NGRAM = 13
"""Words of the n-grams whose overlap with a benchmark question also marks contamination."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
QUESTION_KEYS = ("question", "query", "prompt", "instruction", "text", "input")
EXAMPLES_KEPT = 20
FILTERS = ("require-image", "min-agreement", "decontaminate", "dedup")
"""The filters in the order they look at an item (an item counts under the first that drops it)."""


@dataclass
class FilterOptions:
    """Which export filters apply, and their thresholds."""

    require_image: bool = False
    """Leave out items the blind gate found answerable without the image."""
    min_agreement: float | None = None
    """Leave out items whose second-judge agreement (0 to 1) is below this."""
    dedup: bool = False
    """Leave out near-duplicate images (whole samples) and questions, keeping the first."""
    decontaminate: tuple[Path, ...] = ()
    """JSON or JSONL files of benchmark questions."""
    decontaminate_images: Path | None = None
    """A folder of benchmark images (searched recursively)."""
    image_distance: int = IMAGE_DISTANCE
    question_similarity: float = QUESTION_SIMILARITY
    contamination_similarity: float = CONTAMINATION_SIMILARITY
    contamination_ngram: int = CONTAMINATION_NGRAM

    def __post_init__(self) -> None:
        """Check the thresholds (a bad one is a one-line ValueError)."""
        self.decontaminate = tuple(Path(p) for p in self.decontaminate or ())
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ValueError(f"--min-agreement must be from 0 to 1, got {self.min_agreement}")
        if not 0 <= self.image_distance <= 16:
            raise ValueError(f"--image-distance must be from 0 to 16, got {self.image_distance}")
        for name in ("question_similarity", "contamination_similarity"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.contamination_ngram < 1:
            raise ValueError("--contamination-ngram must be at least 1")
        if self.decontaminate_images is not None:
            self.decontaminate_images = Path(self.decontaminate_images)
        for path in self.decontaminate:
            if path.is_dir():
                raise ValueError(f"--decontaminate {str(path)!r}: a folder, not a file")
            if not path.is_file():
                raise ValueError(f"--decontaminate {str(path)!r}: no such file")
        if self.decontaminate_images is not None and not self.decontaminate_images.is_dir():
            raise ValueError(
                f"--decontaminate-images {str(self.decontaminate_images)!r}: no folder"
            )

    @property
    def active(self) -> bool:
        """Whether any filter applies (without one, the export is unchanged)."""
        return bool(
            self.require_image
            or self.min_agreement is not None
            or self.dedup
            or self.decontaminate
            or self.decontaminate_images
        )

    def applied(self) -> list[str]:
        """Return the filters that apply, as the export's options name them."""
        names = []
        if self.require_image:
            names.append("require-image")
        if self.min_agreement is not None:
            names.append(f"min-agreement {self.min_agreement}")
        if self.decontaminate or self.decontaminate_images:
            names.append("decontaminate")
        if self.dedup:
            names.append("dedup")
        return names


@dataclass
class FilterReport:
    """What the filters checked and left out, per filter."""

    checked: Counter = field(default_factory=Counter)
    """Items each filter looked at (those still in when its turn came)."""
    left_out: Counter = field(default_factory=Counter)
    """Items each filter left out."""
    samples_left_out: Counter = field(default_factory=Counter)
    """Whole samples left out (a duplicate or benchmark image), per filter."""
    examples: list[str] = field(default_factory=list)
    """The first lines saying which item was left out and why."""
    applied: list[str] = field(default_factory=list)

    def note(self, name: str, where: str, why: str) -> None:
        """Count one item left out by filter ``name``, keeping the first lines."""
        self.left_out[name] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"{name}: {where}: {why}")

    def summary(self) -> str:
        """Return one line: each filter's items left out (and whole samples)."""
        if not self.applied:
            return ""
        parts = []
        for name in FILTERS:
            if any(a.startswith(name) for a in self.applied):
                part = f"{name} {self.left_out[name]} of {self.checked[name]} items"
                if self.samples_left_out[name]:
                    part += f" ({self.samples_left_out[name]} whole samples)"
                parts.append(part)
        return "filters left out: " + ", ".join(parts)

    def as_dict(self) -> dict:
        """Return the counts as JSON-ready values (the HF card's ``filters``)."""
        return {
            "applied": list(self.applied),
            "checked": _in_order(self.checked),
            "left_out": _in_order(self.left_out),
            "samples_left_out": _in_order(self.samples_left_out),
        }


def _in_order(counts: Counter) -> dict:
    return {name: counts[name] for name in FILTERS if name in counts}


# -- near-duplicate machinery --------------------------------------------------------------


def phash(path: Path) -> int | None:
    """Return the 64-bit perceptual hash of an image file, or None when it cannot be read."""
    import imagehash
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return int(str(imagehash.phash(image)), 16)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def normal_text(text: str) -> str:
    """Return text lowercased, punctuation removed and spaces collapsed."""
    return " ".join(re.findall(r"[^\W_]+", str(text).lower()))


# -- benchmark files -----------------------------------------------------------------------


def benchmark_questions(path: Path) -> Iterator[str]:
    """Yield the questions of a benchmark file: JSON (a list, or an object holding one) or JSONL.

    A record is a string, or an object whose question is under ``question``, ``query``,
    ``prompt``, ``instruction``, ``text`` or ``input``, or the first human turn of its
    ``conversations``.

    Raises:
        ValueError: the file is not JSON or JSON lines.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else _inner_list(data)
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {n} is not JSON ({err.msg})") from None
    for record in records:
        question = _question_of(record)
        if question:
            yield question


def _inner_list(data: Any) -> list:
    if isinstance(data, dict):
        for value in data.values():
            if isinstance(value, list):
                return value
        return [data]
    return []


def _question_of(record: Any) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return None
    for key in QUESTION_KEYS:
        if isinstance(record.get(key), str):
            return record[key]
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
            return re.sub(r"<image>\s*", "", str(turn.get("value", "")))
    return None


class Benchmarks:
    """The benchmark questions and images an export is checked against (``--decontaminate``)."""

    def __init__(self, options: FilterOptions, scratch: Scratch | None = None):
        """Read the benchmark files and hash the benchmark images, indexing them in ``scratch``."""
        scratch = scratch or Scratch.memory()
        self.n = options.contamination_ngram
        self.questions = QuestionIndex(options.contamination_similarity, scratch)
        self.ngrams = KeySet(scratch)
        count = 0
        for path in options.decontaminate:
            before = count
            for question in benchmark_questions(path):
                text = normal_text(question)
                if not text:
                    continue
                count += 1
                self.questions.add(text, f"{path.name}#{count}")
                self.ngrams.update(self._grams(text))
            if count == before:
                # Checking against nothing would pass every item and look like a clean result.
                raise ValueError(
                    f"--decontaminate {str(path)!r}: no benchmark question found (a record is"
                    " a string, or has a question, query, prompt, instruction, text or input"
                    " field, or LLaVA conversations)"
                )
        self.images = HashIndex(options.image_distance, scratch)
        if options.decontaminate_images is not None:
            for file in sorted(Path(options.decontaminate_images).rglob("*")):
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    value = phash(file)
                    if value is not None:
                        self.images.add(value, file.name)
            if not len(self.images):
                raise ValueError(
                    f"--decontaminate-images {str(options.decontaminate_images)!r}: no readable"
                    f" image found ({' '.join(IMAGE_SUFFIXES)})"
                )
        scratch.commit()

    def _grams(self, text: str) -> list[int]:
        words = text.split()
        return [
            digest(" ".join(words[i : i + self.n]).encode()) for i in range(len(words) - self.n + 1)
        ]

    def question_match(self, text: str, sig=None) -> str | None:
        """Return why a normalised question counts as a benchmark question, or None.

        ``sig`` is its ``signature`` when already made (for the dedup index too).
        """
        found = self.questions.find(text, sig)
        if found:
            return f"question matches benchmark question {found}"
        if self.ngrams.intersects(self._grams(text)):
            return f"question shares a {self.n}-word passage with a benchmark question"
        return None


# -- the filter pass -----------------------------------------------------------------------


def check_gates(store: Store, options: FilterOptions) -> None:
    """Refuse a gate filter whose gate the run did not run: it would check nothing, pass all.

    Raises:
        ValueError: ``--require-image`` without ``--gates blind``, or ``--min-agreement``
            without ``--gates judge2`` (the run's recorded settings say which it ran).
    """
    gates = [g for g in str((store.get_meta("settings") or {}).get("gates") or "").split(",") if g]
    has = f"--gates {','.join(gates)}" if gates else "no gates"
    for flag, gate, wanted in (
        ("--require-image", "blind", options.require_image),
        ("--min-agreement", "judge2", options.min_agreement is not None),
    ):
        if wanted and gate not in gates:
            raise ValueError(f"{flag} needs a run made with --gates {gate}; this run has {has}")


def filter_rows(
    store: Store,
    samples: Iterable[dict],
    options: FilterOptions | None,
    report: FilterReport,
    root: Path,
    rounds: Iterable[int] | None = None,
) -> Iterator[dict]:
    """Yield the samples of ``store.export_rows`` with the filtered items left out.

    ``rounds`` are the evolved versions the export writes (all when None); only their
    items are checked, and only their questions count for ``--dedup``. Items are checked
    in seed order, then round, then position, so a duplicate keeps its first occurrence.
    The indexes' scratch file is removed when the samples end or the generator is closed
    (callers close it: ``contextlib.closing``).
    """
    if options is None or not options.active:
        yield from samples
        return
    check_gates(store, options)
    report.applied = options.applied()
    wanted = None if rounds is None else {r for r in rounds if r > 0}
    bench_wanted = bool(options.decontaminate or options.decontaminate_images)
    with Scratch() if options.dedup or bench_wanted else nullcontext() as scratch:
        bench = Benchmarks(options, scratch) if bench_wanted else None
        images = HashIndex(options.image_distance, scratch) if options.dedup else None
        questions = QuestionIndex(options.question_similarity, scratch) if options.dedup else None
        hashes = HashCache(scratch) if images is not None or (bench and bench.images) else None
        for sample in samples:
            versions = _versions(sample, wanted)
            if _sample_left_out(sample, versions, root, bench, images, hashes, report):
                continue
            gates = (
                store.gates_of(sample["hash_id"], _branch(store, sample["hash_id"]))
                if options.require_image or options.min_agreement is not None
                else {}
            )
            for rnd in versions:
                key = f"conversations_v{rnd}"
                kept = []
                for position, item in enumerate(sample.get(key) or []):
                    where = f"{sample['hash_id']} v{rnd} item {position + 1}"
                    gate = gates.get((rnd, position))
                    why = _item_left_out(item, gate, options, bench, questions, report, where)
                    if why is None:
                        kept.append(item)
                    else:
                        report.note(*why)
                sample[key] = kept
            yield sample


def _versions(sample: dict, wanted: set[int] | None) -> list[int]:
    """Return the evolved rounds of a sample the export writes, in order."""
    found = sorted(
        int(k.removeprefix("conversations_v"))
        for k in sample
        if k.startswith("conversations_v") and k.removeprefix("conversations_v").isdigit()
    )
    return [v for v in found if v > 0 and (wanted is None or v in wanted)]


def _branch(store: Store, hash_id: str) -> str:
    """Return the sample's current branch (read per sample: no dict of every sample)."""
    row = store.sample(hash_id) or {}
    return row.get("branch") or "main"


def _sample_left_out(
    sample: dict,
    versions: list[int],
    root: Path,
    bench: Benchmarks | None,
    images: HashIndex | None,
    hashes: HashCache | None,
    report: FilterReport,
) -> bool:
    """Return whether the whole sample is left out (its image); count its items then."""
    image_name = str(sample.get("image") or "")
    if hashes is None or not image_name:
        return False
    value = hashes.get(image_name, lambda: phash(root / image_name))
    if value is None:
        return False
    match = None
    if bench is not None and bench.images:
        name, why = "decontaminate", "matches benchmark image"
        match = bench.images.find(value)
    if match is None and images is not None:
        name, why = "dedup", "near-duplicates that of"
        match = images.find_or_add(value, sample["hash_id"])
    if match is None:
        return False
    count = sum(len(sample.get(f"conversations_v{v}") or []) for v in versions)
    report.checked[name] += count
    report.samples_left_out[name] += 1
    for _ in range(count):
        report.note(name, sample["hash_id"], f"image {why} {match}")
    return True


def _item_left_out(
    item: dict,
    gate: dict | None,
    options: FilterOptions,
    bench: Benchmarks | None,
    questions: QuestionIndex | None,
    report: FilterReport,
    where: str,
) -> tuple[str, str, str] | None:
    """Return (filter, where, why) when the item is left out, else None (and index it)."""
    if options.require_image:
        report.checked["require-image"] += 1
        if gate and gate.get("blind_verdict") == "answerable":
            return "require-image", where, "answered without the image"
    if options.min_agreement is not None:
        report.checked["min-agreement"] += 1
        agreement = gate.get("agreement") if gate else None
        if agreement is not None and agreement < options.min_agreement:
            return "min-agreement", where, f"second judge agreement {agreement}"
    text = normal_text(item.get("question", "")) if isinstance(item, dict) else ""
    # One MinHash serves both question indexes (None when both ask for the same text only).
    indexes = [q for q in (bench.questions if bench else None, questions) if q is not None]
    sig = signature(text) if text and any(q.bands is not None for q in indexes) else None
    if bench is not None:
        report.checked["decontaminate"] += 1
        why = bench.question_match(text, sig) if text else None
        if why:
            return "decontaminate", where, why
    if questions is not None:
        report.checked["dedup"] += 1
        found = questions.find_or_add(text, where, sig) if text else None
        if found:
            return "dedup", where, f"question near-duplicates {found}"
    return None
