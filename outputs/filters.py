"""Export-time quality filters: leave out items by gate verdict, near-duplicates, benchmark leaks.

Gates score every item during the run (``--gates``); these filters decide at export time
what to leave out, and count each item left out under the first filter that caught it,
in this order: ``--require-image`` (the blind gate answered it without the image),
``--min-agreement`` (the second judge agreed less), ``--decontaminate`` (its question
overlaps a benchmark question, or its image matches a benchmark image), ``--dedup`` (its
image or question near-duplicates one exported before it, in seed order). A sample whose
image is a duplicate or a benchmark image is left out whole.

Samples stream through one at a time; what stays in memory grows only by one perceptual
hash per distinct image and one MinHash LSH entry per exported question.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmevol.store.results import Store

IMAGE_DISTANCE = 4
"""Default Hamming distance (of 64 bits) under which two perceptual hashes are the same image."""
QUESTION_SIMILARITY = 0.8
"""Default Jaccard similarity (of character 5-grams) from which two questions are duplicates."""
CONTAMINATION_SIMILARITY = 0.7
"""Default Jaccard similarity from which a question matches a benchmark question."""
CONTAMINATION_NGRAM = 13
"""Words of the n-grams whose overlap with a benchmark question also marks contamination."""
SHINGLE = 5
NUM_PERM = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
QUESTION_KEYS = ("question", "query", "prompt", "instruction", "text", "input")
EXAMPLES_KEPT = 20


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
        for name in ("require-image", "min-agreement", "decontaminate", "dedup"):
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
            "checked": dict(self.checked),
            "left_out": dict(self.left_out),
            "samples_left_out": dict(self.samples_left_out),
        }


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


class HashIndex:
    """Find 64-bit hashes within a Hamming distance, by exact match on one of d+1 bit blocks.

    Two hashes at most ``d`` bits apart agree exactly on at least one of ``d + 1`` blocks
    (pigeonhole), so each lookup compares only the hashes sharing a block.
    """

    def __init__(self, distance: int):
        """Index hashes that count as the same within ``distance`` differing bits."""
        self.distance = distance
        count = distance + 1
        edges = [round(64 * n / count) for n in range(count + 1)]
        self.blocks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.blocks]
        self.names: list[str] = []
        self.hashes: list[int] = []

    def find(self, value: int) -> str | None:
        """Return the name of an indexed hash within the distance of ``value``, if any."""
        for table, (shift, mask) in zip(self.tables, self.blocks, strict=True):
            for n in table.get((value >> shift) & mask, ()):
                if (self.hashes[n] ^ value).bit_count() <= self.distance:
                    return self.names[n]
        return None

    def add(self, value: int, name: str) -> None:
        """Index ``value`` under ``name``."""
        n = len(self.hashes)
        self.hashes.append(value)
        self.names.append(name)
        for table, (shift, mask) in zip(self.tables, self.blocks, strict=True):
            table.setdefault((value >> shift) & mask, []).append(n)


def normal_text(text: str) -> str:
    """Return text lowercased, punctuation removed and spaces collapsed."""
    return " ".join(re.findall(r"[^\W_]+", str(text).lower()))


class QuestionIndex:
    """Near-duplicate questions by MinHash of character 5-grams in an LSH index (datasketch)."""

    def __init__(self, threshold: float):
        """Index questions that count as the same from Jaccard similarity ``threshold``."""
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self._template = MinHash(num_perm=NUM_PERM)
        self._scheme = self._template.scheme
        # Similarity 1 asks for the same text: the exact table alone answers.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM) if threshold < 1 else None
        self.exact: dict[str, str] = {}

    def signature(self, text: str):
        """Return the MinHash of a normalised question."""
        grams = {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
        sig = self._minhash(
            num_perm=NUM_PERM, permutations=self._template.permutations, scheme=self._scheme
        )
        sig.update_batch([g.encode() for g in grams])
        return sig

    def find(self, text: str, sig=None) -> str | None:
        """Return the name of an indexed near-duplicate of ``text`` (normalised), if any."""
        if text in self.exact:
            return self.exact[text]
        if self.lsh is None:
            return None
        found = self.lsh.query(sig if sig is not None else self.signature(text))
        return min(found, key=_order) if found else None

    def add(self, text: str, name: str, sig=None) -> None:
        """Index ``text`` (normalised) under ``name`` (unique)."""
        self.exact.setdefault(text, name)
        if self.lsh is not None:
            self.lsh.insert(name, sig if sig is not None else self.signature(text))


def _order(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


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

    def __init__(self, options: FilterOptions):
        """Read the benchmark files and hash the benchmark images."""
        self.n = options.contamination_ngram
        self.questions = QuestionIndex(options.contamination_similarity)
        self.ngrams: set[int] = set()
        count = 0
        for path in options.decontaminate:
            for question in benchmark_questions(path):
                text = normal_text(question)
                if not text:
                    continue
                count += 1
                self.questions.add(text, f"{path.name}#{count}")
                self.ngrams.update(self._grams(text))
        self.images = HashIndex(options.image_distance)
        if options.decontaminate_images is not None:
            for file in sorted(Path(options.decontaminate_images).rglob("*")):
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    value = phash(file)
                    if value is not None:
                        self.images.add(value, file.name)

    def _grams(self, text: str) -> set[int]:
        words = text.split()
        return {hash(" ".join(words[i : i + self.n])) for i in range(len(words) - self.n + 1)}

    def question_match(self, text: str) -> str | None:
        """Return why a normalised question counts as a benchmark question, or None."""
        found = self.questions.find(text)
        if found:
            return f"question matches benchmark question {found}"
        if self.ngrams and not self.ngrams.isdisjoint(self._grams(text)):
            return f"question shares a {self.n}-word passage with a benchmark question"
        return None


# -- the filter pass -----------------------------------------------------------------------


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
    """
    if options is None or not options.active:
        yield from samples
        return
    report.applied = options.applied()
    wanted = None if rounds is None else {r for r in rounds if r > 0}
    bench = Benchmarks(options) if options.decontaminate or options.decontaminate_images else None
    images = HashIndex(options.image_distance) if options.dedup else None
    questions = QuestionIndex(options.question_similarity) if options.dedup else None
    hashes: dict[str, int | None] = {}
    branches = dict(store.db.execute("select hash_id, coalesce(branch, 'main') from samples"))
    for sample in samples:
        hash_id = sample["hash_id"]
        versions = sorted(
            int(k.removeprefix("conversations_v"))
            for k in sample
            if k.startswith("conversations_v") and k.removeprefix("conversations_v").isdigit()
        )
        versions = [v for v in versions if v > 0 and (wanted is None or v in wanted)]
        count = sum(len(sample.get(f"conversations_v{v}") or []) for v in versions)
        image_name = str(sample.get("image") or "")
        value = None
        if image_name and (images is not None or (bench and bench.images.hashes)):
            if image_name not in hashes:
                hashes[image_name] = phash(root / image_name)
            value = hashes[image_name]
        # Whole-sample filters: a benchmark image, then a duplicate image.
        if bench is not None and bench.images.hashes:
            match = bench.images.find(value) if value is not None else None
            if match:
                report.checked["decontaminate"] += count
                report.samples_left_out["decontaminate"] += 1
                for _ in range(count):
                    report.note("decontaminate", hash_id, f"image matches benchmark image {match}")
                continue
        if images is not None and value is not None:
            match = images.find(value)
            if match:
                report.checked["dedup"] += count
                report.samples_left_out["dedup"] += 1
                for _ in range(count):
                    report.note("dedup", hash_id, f"image near-duplicates that of {match}")
                continue
            images.add(value, hash_id)
        gates = (
            store.gates_of(hash_id, branches.get(hash_id, "main"))
            if options.require_image or options.min_agreement is not None
            else {}
        )
        for rnd in versions:
            key = f"conversations_v{rnd}"
            kept = []
            for position, item in enumerate(sample.get(key) or []):
                where = f"{hash_id} v{rnd} item {position + 1}"
                why = _item_left_out(
                    item, gates.get((rnd, position)), options, bench, questions, report, where
                )
                if why is None:
                    kept.append(item)
                else:
                    report.note(*why)
            sample[key] = kept
        yield sample


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
    if bench is not None:
        report.checked["decontaminate"] += 1
        why = bench.question_match(text) if text else None
        if why:
            return "decontaminate", where, why
    if questions is not None:
        report.checked["dedup"] += 1
        if not text:
            return None
        sig = questions.signature(text) if questions.lsh is not None else None
        found = questions.find(text, sig)
        if found:
            return "dedup", where, f"question near-duplicates {found}"
        questions.add(text, where, sig)
    return None
