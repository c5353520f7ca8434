"""Training-set exports of a run: LLaVA, LLaMA-Factory ShareGPT and Hugging Face datasets.

One record is made per kept round of a finished sample (and per sample's seed items when
round 0 is asked for). Records stream from ``results.db`` through ``Store.export_rows``,
are validated one by one (a record with a problem is skipped, counted and named by sample
and round; its image must be a readable image inside the image root, see
``mmevol.runtime.images.check``), and are written to a temporary file renamed into place
at the end (``mmevol.outputs.trust.write_whole``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmevol.graph.items import SCORE_SCALE, QAItem
from mmevol.outputs import trust
from mmevol.outputs.filters import FilterOptions, FilterReport, filter_rows
from mmevol.run.seed import turns_to_items
from mmevol.runtime import images
from mmevol.store.results import Store

FORMATS = ("authors", "llava", "llava-next", "sharegpt", "hf")
TRAINING_FORMATS = ("llava", "llava-next", "sharegpt", "hf")
JSON_FORMATS = ("llava", "llava-next", "sharegpt")
"""The formats written as JSON files (a list for ``.json``, JSON lines for ``.jsonl``)."""
STEP_MODES = ("inline", "none", "field")
BOX_MODES = ("unit", "1000", "pixels")
DEFAULT_ROUNDS = (1, 2, 3)
DEFAULT_STEPS = "inline"
DEFAULT_BOXES = "unit"
IMAGE_TOKEN = "<image>"
PLACEHOLDERS = (
    # LLaVA and LLaVA-NeXT (<image>; <im_start>, <im_end>, <im_patch> with mm_use_im_start_end),
    # LLaMA-Factory (<image>, <video>, <audio>: counted against the media of each record),
    # Hugging Face processors (Idefics, LLaVA, Qwen2-VL/Qwen2.5-VL) and ChatML turn markers.
    IMAGE_TOKEN,
    "<video>",
    "<audio>",
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<fake_token_around_image>",
    "<end_of_utterance>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
)
"""Text that trainers read as a media placeholder or a turn marker: removed from exported text."""
SPLIT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PROBLEMS_KEPT = 20
"""How many problem lines an export keeps to show (all are counted)."""


class MissingExtra(RuntimeError):
    """An optional dependency group of mmevol is not installed."""


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` or raise MissingExtra naming the extra to install."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MissingExtra(
                f"this needs the optional dependencies of mmevol[{extra}] ({name} is missing):"
                f" pip install 'mmevol[{extra}]'"
            ) from err


@dataclass
class ExportOptions:
    """What a training export takes from a run and how it writes it."""

    rounds: tuple[int, ...] = DEFAULT_ROUNDS
    """Which versions of the items become records: 0 (the seed items) to the run's rounds."""
    min_score: int | None = None
    """Keep only evolved items whose judge score is at least this (seed items have none)."""
    steps: str = DEFAULT_STEPS
    """How solving steps appear: inline (before the answer), none, or field (kept apart)."""
    images: Path | None = None
    """Image root; the run's recorded --images when None."""
    image_max_side: int | None = None
    """hf only: downscale embedded images to at most this many pixels a side."""
    push_to_hub: str | None = None
    """hf only: a Hub dataset repository to push the written folder to."""
    relative_to: Path | None = None
    """llava, llava-next, sharegpt: write image paths relative to this folder."""
    boxes: str = DEFAULT_BOXES
    """Boxes in the text: unit (0-1 floats, as written), 1000 (0-1000 integers), pixels."""
    split: tuple[str, float] | None = None
    """A held-out split: its name and the fraction of samples (by hash_id) that go to it."""
    license: str | None = None
    """hf only: the card's license (the Hub's identifier); ``other`` and a request when None."""
    image_column: bool = True
    """hf only: keep the one-image ``image`` column beside ``images`` (stores each image twice)."""
    filters: FilterOptions | None = None
    """Quality filters (``--require-image``, ``--dedup`` ...): items they leave out."""

    def __post_init__(self) -> None:
        """Check the options (a bad one is a one-line ValueError)."""
        if self.steps not in STEP_MODES:
            raise ValueError(f"--steps must be one of {', '.join(STEP_MODES)}, not {self.steps!r}")
        low, high = SCORE_SCALE
        if self.min_score is not None and not low <= self.min_score <= high:
            raise ValueError(
                f"--min-score must be from {low} to {high} (the judge's scale),"
                f" not {self.min_score}"
            )
        if not self.rounds:
            raise ValueError("--rounds names no round")
        if any(r < 0 for r in self.rounds):
            raise ValueError(f"--rounds must be 0 or more, not {list(self.rounds)}")
        self.rounds = tuple(sorted(set(self.rounds)))
        if self.image_max_side is not None and self.image_max_side < 16:
            raise ValueError("--image-max-side must be at least 16 pixels")
        if self.boxes not in BOX_MODES:
            raise ValueError(f"--boxes must be one of {', '.join(BOX_MODES)}, not {self.boxes!r}")

    @classmethod
    def from_given(
        cls, rounds: str | None = None, steps: str | None = None, **options: Any
    ) -> ExportOptions:
        """Build the options from the command line's: ``rounds`` as text, None where not given."""
        return cls(
            rounds=parse_rounds(rounds) if rounds else DEFAULT_ROUNDS,
            steps=steps or DEFAULT_STEPS,
            **options,
        )


def parse_split(text: str) -> tuple[str, float]:
    """Parse ``val=0.02`` into a split name and the fraction of samples it takes."""
    name, _, value = text.partition("=")
    name = name.strip()
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not SPLIT_NAME.fullmatch(name) or name == "train" or not 0 < fraction < 1:
        raise ValueError(
            f"--split takes NAME=FRACTION with a name other than train and 0 < FRACTION < 1"
            f" (e.g. val=0.02), not {text!r}"
        )
    return name, fraction


def split_of(hash_id: str, split: tuple[str, float] | None) -> str:
    """Return the split a sample goes to: decided by its hash_id alone, so shards agree."""
    if split is None:
        return "train"
    digest = hashlib.sha256(hash_id.encode("utf-8")).digest()
    return split[0] if int.from_bytes(digest[:8], "big") < split[1] * 2**64 else "train"

    @classmethod
    def from_given(
        cls, rounds: str | None = None, steps: str | None = None, **options: Any
    ) -> ExportOptions:
        """Build the options from the command line's: ``rounds`` as text, None where not given."""
        return cls(
            rounds=parse_rounds(rounds) if rounds else DEFAULT_ROUNDS,
            steps=steps or DEFAULT_STEPS,
            **options,
        )


def parse_rounds(text: str) -> tuple[int, ...]:
    """Parse ``1,2,3`` (or ``0-3``) into round numbers."""
    rounds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                low, high = (int(p) for p in part.split("-", 1))
                rounds.extend(range(low, high + 1))
            else:
                rounds.append(int(part))
    except ValueError:
        raise ValueError(f"--rounds takes numbers like 1,2,3 or 0-3, not {text!r}") from None
    return tuple(rounds)


# -- records ----------------------------------------------------------------------------


@dataclass
class Pair:
    """One question and its answer as a record carries them."""

    question: str
    answer: str
    steps: list[dict[str, str]]
    score: int | None


@dataclass
class Record:
    """One training record: the Q&A pairs of one round of one sample, on its image."""

    hash_id: str
    round: int
    image: str
    """Path relative to the image root, as in the seed."""
    image_file: Path
    """The image file (``check_record`` sets it to the checked file, symlinks resolved)."""
    pairs: list[Pair]
    source_id: str | None = None
    image_out: str | None = None
    """The image path to write when it is not the format's own (``--relative-to``)."""

    @property
    def id(self) -> str:
        """Return the record's id: ``<hash_id>_v<round>``."""
        return f"{self.hash_id}_v{self.round}"


class RecordProblem(ValueError):
    """A record that cannot be written: its kind (for counts) and a line naming it."""

    def __init__(self, kind: str, hash_id: str, rnd: int, detail: str):
        """Name the sample and round a problem belongs to."""
        super().__init__(f"sample {hash_id} round {rnd}: {detail}")
        self.kind = kind


def clean_text(value: Any, removed: Counter | None = None) -> str:
    """Return an item's text without trainer placeholders (the record places its own image).

    ``removed`` counts each placeholder taken out (see PLACEHOLDERS).
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    for token in PLACEHOLDERS:
        if token in value:
            if removed is not None:
                removed[token] += value.count(token)
            value = value.replace(token, "")
    return value.strip()


_NUMBER = r"-?\d+(?:\.\d+)?"
BOX = re.compile(r"\[\s*" + r"\s*,\s*".join([f"({_NUMBER})"] * 4) + r"\s*\]")
"""A box as the run writes it in text: ``[x1, y1, x2, y2]``."""


def convert_boxes(
    text: str | None, mode: str, size: tuple[int, int] | None, counts: Counter
) -> str | None:
    """Rewrite the 0-1 boxes of ``text`` as 0-1000 integers or as pixels of an image of ``size``.

    A bracketed four-number list that is not a 0-1 box (``x1 <= x2``, ``y1 <= y2``) is left
    as it is and counted as ``left``. None (a step without a manipulation) stays None.
    """
    if mode == "unit" or text is None:
        return text

    def convert(match: re.Match) -> str:
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        if not (0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1):
            counts["left"] += 1
            return match[0]
        width, height = (1000, 1000) if mode == "1000" else size or (1, 1)
        scaled = (x1 * width, y1 * height, x2 * width, y2 * height)
        counts["converted"] += 1
        return "[" + ", ".join(str(round(v)) for v in scaled) + "]"

    return BOX.sub(convert, text)


def convert_pair_boxes(pair: Pair, mode: str, size: tuple[int, int] | None, counts: Counter):
    """Convert the boxes of a pair's question, answer and steps in place."""
    pair.question = convert_boxes(pair.question, mode, size, counts)
    pair.answer = convert_boxes(pair.answer, mode, size, counts)
    for step in pair.steps:
        for key in ("manipulation", "description"):
            step[key] = convert_boxes(step[key], mode, size, counts)


def steps_text(steps: list[dict[str, str]]) -> str:
    """Write solving steps as numbered lines, the manipulation after the description."""
    lines = []
    for step in steps:
        description = clean_text(step.get("description"))
        manipulation = clean_text(step.get("manipulation"))
        if manipulation in ("", "None"):
            manipulation = ""
        if not description and not manipulation:
            continue
        text = description or manipulation
        if description and manipulation:
            text = f"{description} [{manipulation}]"
        lines.append(f"{len(lines) + 1}. {text}")
    return "\n".join(lines)


def answer_text(pair: Pair, steps: str) -> str:
    """Return the answer turn: with the solving steps before it when ``steps`` is inline."""
    if steps != "inline":
        return pair.answer
    written = steps_text(pair.steps)
    if not written:
        return pair.answer
    return f"Solving steps:\n{written}\nAnswer: {pair.answer}"


def _seed_items(raw: list) -> list[dict]:
    """Return the seed items the run evolved from (LLaVA turns converted, bad items left out)."""
    if raw and all(isinstance(t, dict) and "from" in t for t in raw):
        raw = turns_to_items(raw)
    items = []
    for entry in raw:
        try:
            items.append(QAItem.model_validate(entry).model_dump())
        except ValidationError:
            continue  # the run left it out too (recorded as a seed drop)
    return items


def _pairs(
    items: list[dict], min_score: int | None, rnd: int, removed: Counter | None = None
) -> list[Pair]:
    pairs = []
    for item in items:
        score = item.get("score")
        if rnd > 0 and min_score is not None and (score is None or score < min_score):
            continue
        steps = [
            {
                "manipulation": _manipulation(s.get("manipulation"), removed),
                "description": clean_text(s.get("description"), removed),
            }
            for s in item.get("steps") or []
            if isinstance(s, dict)
        ]
        question = clean_text(item.get("question"), removed)
        pairs.append(Pair(question, clean_text(item.get("answer"), removed), steps, score))
    return pairs


def _manipulation(value: Any, removed: Counter | None = None) -> str | None:
    """Return a step's manipulation, or None for none (the authors write the string "None")."""
    text = clean_text(value, removed)
    return None if text in ("", "None") else text


def check_record(record: Record, image_root: Path, image_seen: bool = False) -> None:
    """Raise RecordProblem unless the record can be trained on as it is.

    The image must resolve (symlinks followed) to a file inside the image root that reads
    as an image (``mmevol.runtime.images.check``); ``record.image_file`` is set to that
    file. ``image_seen`` skips the image checks (already passed for another round of the
    sample, whose file the caller sets).
    """
    name = (record.hash_id, record.round)
    if not record.pairs:
        raise RecordProblem("no Q&A pair", *name, "no Q&A pair")
    for n, pair in enumerate(record.pairs, 1):
        if not pair.question:
            raise RecordProblem("empty question", *name, f"question {n} is empty")
        if not pair.answer:
            raise RecordProblem("empty answer", *name, f"answer {n} is empty")
    if image_seen:
        return
    try:
        record.image_file = images.check(image_root, record.image)
    except images.ImageProblem as problem:
        raise RecordProblem(problem.kind, *name, str(problem)) from problem


def check_turns(turns: list[tuple[str, str]], record: Record, user: str, assistant: str) -> None:
    """Raise RecordProblem unless the turns can be trained on.

    They must alternate user/assistant, be non-empty, and carry the image token exactly
    once, in the first user turn.
    """
    name = (record.hash_id, record.round)
    if not turns or len(turns) % 2:
        raise RecordProblem("turns do not alternate", *name, f"{len(turns)} turns")
    for n, (role, text) in enumerate(turns):
        expected = user if n % 2 == 0 else assistant
        if role != expected:
            raise RecordProblem(
                "turns do not alternate", *name, f"turn {n} is {role!r}, expected {expected!r}"
            )
        if not text.replace(IMAGE_TOKEN, "").strip():
            raise RecordProblem("empty text", *name, f"turn {n} ({role}) is empty")
    tokens = [n for n, (_, text) in enumerate(turns) if IMAGE_TOKEN in text]
    if tokens != [0] or turns[0][1].count(IMAGE_TOKEN) != 1:
        raise RecordProblem(
            "image token misplaced", *name, f"{IMAGE_TOKEN} must appear once, in turn 0"
        )


@dataclass
class ExportReport:
    """What an export wrote and what it skipped."""

    output: Path
    format: str
    written: int = 0
    samples: int = 0
    per_round: Counter = field(default_factory=Counter)
    """Records written per round."""
    items_per_round: Counter = field(default_factory=Counter)
    """Q&A pairs written per round."""
    below_min_score: int = 0
    """Rounds with kept items that --min-score emptied (no record, not a problem)."""
    skipped: Counter = field(default_factory=Counter)
    """Records skipped, by kind of problem."""
    problems: list[str] = field(default_factory=list)
    """The first problem lines (PROBLEMS_KEPT of them), naming sample and round."""
    missing_images: list[str] = field(default_factory=list)
    """The first images skipped as missing (looked for near the root to suggest one)."""
    missing_example: str | None = None
    """The line of the first record skipped as image missing."""
    files: list[Path] = field(default_factory=list)
    """Files written beside the output (dataset_info.json, the dataset card, split files)."""
    pushed_to: str | None = None
    placeholders: Counter = field(default_factory=Counter)
    """Trainer placeholders removed from the items' text, by placeholder."""
    boxes: Counter = field(default_factory=Counter)
    """Boxes converted by --boxes (``converted``), and lists left as they were (``left``)."""
    splits: Counter = field(default_factory=Counter)
    """Records written per split (with --split)."""
    split_bytes: Counter = field(default_factory=Counter)
    """Arrow bytes written per split (hf: the card's ``num_bytes``, as ``datasets`` counts)."""
    notes: list[str] = field(default_factory=list)
    """What the user should know to train on the output (one line each)."""
    filtered: FilterReport = field(default_factory=FilterReport)
    """What the quality filters checked and left out."""

    def skip(self, problem: RecordProblem) -> None:
        """Count a skipped record and keep its line when there is room."""
        self.skipped[problem.kind] += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(str(problem))
        if problem.kind == "image missing" and self.missing_example is None:
            self.missing_example = str(problem)

    def check_found(self, root: Path, done: int) -> None:
        """Refuse an export that wrote nothing of a finished run or lost most to no image.

        See ``mmevol.outputs.trust.check_found``.
        """
        why = [f"skipped {k} {n}" for k, n in self.skipped.most_common()]
        if self.below_min_score:
            why.append(f"{self.below_min_score} rounds had no item at --min-score")
        trust.check_found(
            root,
            unit="records",
            done=done,
            written=self.written,
            considered=self.written + sum(self.skipped.values()),
            missing=self.skipped["image missing"],
            missing_images=self.missing_images,
            example=self.missing_example,
            why=", ".join(why) or "no kept item in the rounds asked for",
        )

    def summary(self) -> str:
        """Return one line: records written per round, and what was skipped."""
        rounds = ", ".join(f"v{r} {n}" for r, n in sorted(self.per_round.items())) or "none"
        line = (
            f"wrote {self.written} {self.format} records from {self.samples} samples"
            f" to {self.output} ({rounds})"
        )
        if self.skipped:
            kinds = ", ".join(f"{k} {n}" for k, n in self.skipped.most_common())
            line += f"; skipped {sum(self.skipped.values())} records ({kinds})"
        if self.below_min_score:
            line += f"; {self.below_min_score} rounds had no item at --min-score"
        if self.splits:
            line += "; splits " + ", ".join(f"{k} {n}" for k, n in sorted(self.splits.items()))
        if self.placeholders:
            kinds = ", ".join(f"{k} {n}" for k, n in self.placeholders.most_common())
            line += f"; removed trainer placeholders from the text ({kinds})"
        if self.filtered.applied:
            line += "; " + self.filtered.summary()
        if self.boxes["converted"] or self.boxes["left"]:
            line += f"; boxes converted {self.boxes['converted']}"
            if self.boxes["left"]:
                line += f" ({self.boxes['left']} bracketed lists not 0-1 boxes left as they were)"
        return line

    def skipped_lines(self) -> list[str]:
        """Return a line per skipped record kept, then how many more were skipped."""
        lines = [f"skipped: {line}" for line in self.problems]
        hidden = sum(self.skipped.values()) - len(self.problems)
        if hidden > 0:
            lines.append(f"... and {hidden} more skipped records")
        return lines

    def written_lines(self) -> list[str]:
        """Return a line per file written beside the output, the notes, and where it was pushed."""
        lines = [f"wrote {extra}" for extra in self.files]
        lines += [f"note: {note}" for note in self.notes]
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/datasets/{self.pushed_to}")
        return lines


def run_settings(store: Store) -> dict:
    """Return the settings a run recorded (empty for a run that recorded none)."""
    return store.get_meta("settings") or {}


def image_root(store: Store, override: Path | None) -> Path:
    """Return the image root: ``override``, else the run's recorded --images."""
    return trust.image_root(run_settings(store), override)


def iter_records(
    store: Store, options: ExportOptions, report: ExportReport, root: Path
) -> Iterator[Record]:
    """Yield the valid records of a run in seed order, counting the skipped ones."""
    run_rounds = run_settings(store).get("rounds", 3)
    too_far = [r for r in options.rounds if r > run_rounds]
    if too_far:
        raise ValueError(f"--rounds {too_far} beyond the run's {run_rounds} rounds")
    base = None if options.relative_to is None else relative_base(root, options.relative_to)
    checked: tuple[str, Path] | None = None  # the last image that passed, and its file
    size: tuple[int, int] | None = None  # its size, for --boxes pixels
    samples = store.export_rows(run_rounds)
    samples = filter_rows(store, samples, options.filters, report.filtered, root, options.rounds)
    for sample in samples:
        hash_id = sample["hash_id"]
        image = str(sample.get("image") or "")
        source_id = None if sample.get("id") is None else str(sample.get("id"))
        made = False
        for rnd in options.rounds:
            if rnd == 0:
                try:
                    items = _seed_items(sample.get("conversations_v0") or [])
                except ValueError as err:
                    report.skip(RecordProblem("unreadable seed items", hash_id, 0, str(err)))
                    continue
            else:
                items = sample.get(f"conversations_v{rnd}") or []
            if not items:
                continue  # an empty round makes no record
            pairs = _pairs(items, options.min_score, rnd, report.placeholders)
            if not pairs:
                report.below_min_score += 1
                continue
            record = Record(hash_id, rnd, image, root / image, pairs, source_id)
            seen = checked is not None and checked[0] == image
            if seen:
                record.image_file = checked[1]
            try:
                check_record(record, root, image_seen=seen)
                if options.boxes == "pixels" and not seen:
                    size = image_size(record)
                checked = (image, record.image_file)
            except RecordProblem as problem:
                report.skip(problem)
                if (
                    problem.kind == "image missing"
                    and len(report.missing_images) < trust.ROOT_SAMPLE
                    and image not in report.missing_images
                ):
                    report.missing_images.append(image)
                continue
            if options.boxes != "unit":
                for pair in pairs:
                    convert_pair_boxes(pair, options.boxes, size, report.boxes)
            if base is not None:
                record.image_out = os.path.relpath(os.path.abspath(record.image_file), base)
            made = True
            yield record
        report.samples += made


def image_size(record: Record) -> tuple[int, int]:
    """Return an image's width and height (its header only), or raise RecordProblem."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(record.image_file) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise RecordProblem(
            "image unreadable", record.hash_id, record.round, f"image {record.image}: {err}"
        ) from err


def relative_base(root: Path, folder: Path) -> str:
    """Return ``folder`` as an absolute path, or raise ValueError unless the image root is in it."""
    base = os.path.abspath(folder)
    images = os.path.abspath(root)
    if os.path.commonpath([base, images]) != base:
        raise ValueError(
            f"--relative-to {folder}: the image root {root} is not inside it; give the image"
            " root or a folder that holds it"
        )
    return base


# -- the per-format record shapes -------------------------------------------------------


def llava_record(record: Record, steps: str) -> dict:
    """Return a LLaVA record: id, image (relative), conversations of from/value turns."""
    turns = []
    for n, pair in enumerate(record.pairs):
        question = f"{IMAGE_TOKEN}\n{pair.question}" if n == 0 else pair.question
        turns.append(("human", question))
        turns.append(("gpt", answer_text(pair, steps)))
    check_turns(turns, record, "human", "gpt")
    out: dict[str, Any] = {
        "id": record.id,
        "image": record.image_out or record.image,
        "conversations": [{"from": role, "value": text} for role, text in turns],
    }
    if steps == "field":
        out["steps"] = [pair.steps for pair in record.pairs]
    return out


def sharegpt_record(record: Record, steps: str) -> dict:
    """Return a LLaMA-Factory record: messages of role/content, images as absolute paths."""
    turns = []
    for n, pair in enumerate(record.pairs):
        question = f"{IMAGE_TOKEN}{pair.question}" if n == 0 else pair.question
        turns.append(("user", question))
        turns.append(("assistant", answer_text(pair, steps)))
    check_turns(turns, record, "user", "assistant")
    out: dict[str, Any] = {
        "id": record.id,
        "messages": [{"role": role, "content": text} for role, text in turns],
        "images": [record.image_out or str(record.image_file.resolve())],
    }
    if steps == "field":
        out["steps"] = [pair.steps for pair in record.pairs]
    return out


SHAREGPT_COLUMNS = {"messages": "messages", "images": "images"}
SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
}


def dataset_info_entry(output: Path) -> dict:
    """Return the dataset_info.json entry that registers a sharegpt export with LLaMA-Factory."""
    return {
        "file_name": output.name,
        "formatting": "sharegpt",
        "columns": dict(SHAREGPT_COLUMNS),
        "tags": dict(SHAREGPT_TAGS),
    }


# -- writing ----------------------------------------------------------------------------


def part_path(output: Path) -> Path:
    """Return the temporary name an output is written under before it is renamed."""
    return output.with_name(output.name + ".part")


class JsonWriter:
    """Stream records into a JSON list (or JSON lines) file, put in place by ``commit``.

    The file is a ``trust.WholeFile``: whole or not at all, through a symlink, a device
    written directly. Leaving a ``with`` block without ``commit`` aborts.
    """

    def __init__(self, output: Path, lines: bool):
        """Open the file that will become ``output``; ``lines`` writes JSON lines."""
        self.output = output
        self.lines = lines
        self.count = 0
        self._file = trust.WholeFile(output)
        if not lines:
            self._file.fh.write("[")

    def add(self, record: dict) -> None:
        """Write one record."""
        text = json.dumps(record, ensure_ascii=False)
        if self.lines:
            self._file.fh.write(text + "\n")
        else:
            self._file.fh.write((",\n" if self.count else "\n") + text)
        self.count += 1

    def commit(self) -> None:
        """Close the file and put it in place."""
        if self._file.fh is not None and not self.lines:
            self._file.fh.write("\n]\n")
        self._file.commit()

    def abort(self) -> None:
        """Close and remove the temporary file (the output, if any, is left untouched)."""
        self._file.abort()

    def __enter__(self) -> JsonWriter:
        """Return the open writer."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Abort unless committed."""
        self.abort()


def write_json_records(
    output: Path,
    records: Iterator[dict],
    report: ExportReport,
    lines: bool,
    accept: Callable[[None], None] | None = None,
) -> None:
    """Stream records into a JSON list (or JSON lines) file, put in place when whole.

    See ``mmevol.outputs.trust.WholeFile``: ``accept`` may refuse what was written, a
    symlink is written through and a device directly.
    """
    with JsonWriter(output, lines) as writer:
        for record in records:
            writer.add(record)
            report.written += 1
        if accept is not None:
            accept(None)
        writer.commit()


def _shaped_records(
    records: Iterator[Record],
    shape: Callable[[Record, str], dict],
    options: ExportOptions,
    report: ExportReport,
) -> Iterator[tuple[Record, dict]]:
    for record in records:
        try:
            out = shape(record, options.steps)
        except RecordProblem as problem:
            report.skip(problem)
            continue
        report.per_round[record.round] += 1
        report.items_per_round[record.round] += len(record.pairs)
        yield record, out


def _shaped(
    records: Iterator[Record],
    shape: Callable[[Record, str], dict],
    options: ExportOptions,
    report: ExportReport,
) -> Iterator[dict]:
    for _, out in _shaped_records(records, shape, options, report):
        yield out


def write_dataset_infos(folder: Path, outputs: dict[str, Path]) -> Path:
    """Add (or replace) one entry per written file in ``folder/dataset_info.json``."""
    info_path = folder / "dataset_info.json"
    info = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{info_path} is not valid JSON ({err}); fix or remove it") from err
    for name, output in outputs.items():
        info[name] = dataset_info_entry(output)
    text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    trust.write_whole(info_path, lambda fh: fh.write(text))
    return info_path


def next_yaml(data: Path) -> str:
    """Return the LLaVA-NeXT data list (``--data_path x.yaml``) that names one data file.

    LLaVA-NeXT opens ``json_path`` from the trainer's working folder: the path is absolute.
    """
    path = json.dumps(os.path.abspath(data), ensure_ascii=False)  # a JSON string is YAML
    return f"datasets:\n  - json_path: {path}\n    sampling_strategy: all\n"


def write_next_yaml(data: Path) -> Path:
    """Write ``<data stem>.yaml`` beside a llava-next data file; return its path."""
    path = data.with_suffix(".yaml")
    tmp = part_path(path)
    tmp.write_text(next_yaml(data), encoding="utf-8")
    tmp.replace(path)
    return path


def replace_dir(tmp: Path, output: Path) -> None:
    """Put a fully written folder in place of ``output`` (the old one is removed after)."""
    old = output.with_name(output.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if output.exists():
        if not output.is_dir():
            raise ValueError(f"{output} exists and is not a folder")
        os.replace(output, old)
    os.replace(tmp, output)
    if old.exists():
        shutil.rmtree(old)


def check_request(fmt: str, options: ExportOptions) -> None:
    """Refuse a format that is not a training format, or options it does not take."""
    if fmt not in TRAINING_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "hf" and (options.image_max_side or options.push_to_hub or options.license):
        raise ValueError("--image-max-side, --push-to-hub and --license apply to --format hf only")
    if fmt != "hf" and not options.image_column:
        raise ValueError("--no-image-column applies to --format hf only")
    if fmt == "hf" and options.relative_to is not None:
        raise ValueError("--relative-to applies to llava, llava-next and sharegpt (hf embeds)")


def check_output(fmt: str, output: Path) -> None:
    """Refuse an output whose suffix the format would not honour (a device has none)."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(mode := output.stat().st_mode) and not stat.S_ISDIR(mode):
            return  # /dev/stdout, a pipe: written as a JSON list
    suffix = output.suffix.lower()
    if fmt == "hf":
        if suffix in (".json", ".jsonl", ".parquet"):
            raise ValueError(f"--format hf writes a folder: -o {output} names a {suffix} file")
    elif fmt in JSON_FORMATS and suffix not in (".json", ".jsonl"):
        raise ValueError(
            f"-o {output}: --format {fmt} writes .json (a JSON list) or .jsonl (JSON lines)"
        )


def split_outputs(output: Path, split: tuple[str, float] | None) -> dict[str, Path]:
    """Return the file each split is written to: ``output`` alone, or ``<stem>_<split>``."""
    if split is None:
        return {"train": output}
    return {
        name: output.with_name(f"{output.stem}_{name}{output.suffix}")
        for name in ("train", split[0])
    }


def export_records(
    results_db: Path, output: Path, fmt: str, options: ExportOptions | None = None
) -> ExportReport:
    """Write a run's kept rounds as JSON training records in ``fmt`` (llava, llava-next, sharegpt).

    ``mmevol.outputs.training.export_training`` picks this or the ``hf`` writer by format.
    With ``options.split`` the records go to one file per split (``<stem>_train``,
    ``<stem>_<name>``), a sample's records all to the same one.
    """
    options = options or ExportOptions()
    check_request(fmt, options)
    if fmt == "hf":
        raise ValueError("--format hf is written by mmevol.outputs.hfexport.export_hf")
    report = ExportReport(output=output, format=fmt)
    lines = output.suffix.lower() == ".jsonl"
    paths = split_outputs(output, options.split)
    with Store(results_db) as store:
        for path in {output, *paths.values()}:
            trust.check_output(path, results_db, store.get_meta("seed"))
        check_output(fmt, output)
        root = image_root(store, options.images)
        records = iter_records(store, options, report, root)
        shape = sharegpt_record if fmt == "sharegpt" else llava_record
        done = store.status_counts().get("done", 0)
        writers: dict[str, JsonWriter] = {}
        try:
            for name, path in paths.items():
                writers[name] = JsonWriter(path, lines)
            for record, out in _shaped_records(records, shape, options, report):
                name = split_of(record.hash_id, options.split)
                writers[name].add(out)
                report.written += 1
                if options.split:
                    report.splits[name] += 1
            report.check_found(root, done)
            for writer in writers.values():
                writer.commit()
        finally:
            records.close()  # the filters' scratch file goes now, even on an error
            for writer in writers.values():
                writer.abort()
    if options.split:
        report.files.extend(paths.values())
    if fmt == "sharegpt" and all(map(_is_file, paths.values())):  # not a device (/dev/stdout)
        folder = output.parent
        report.files.append(write_dataset_infos(folder, {p.stem: p for p in paths.values()}))
        if options.relative_to is not None and os.path.abspath(
            options.relative_to
        ) != os.path.abspath(folder):
            report.notes.append(
                f"image paths are relative to {options.relative_to}: set media_dir to that"
                " folder in the LLaMA-Factory config (it defaults to dataset_dir)"
            )
    if fmt == "llava-next":
        report.files.extend(write_next_yaml(path) for path in paths.values())
        report.notes.append("train with --data_path set to the .yaml (LLaVA-NeXT reads it)")
    elif fmt == "llava" and lines:
        report.notes.append(
            "LLaVA-1.5 reads --data_path with json.load: give it a .json export; LLaVA-NeXT"
            " reads .jsonl only through a .yaml list (--format llava-next writes it)"
        )
    return report


def _is_file(path: Path) -> bool:
    """Tell whether ``path`` is (or links to) a regular file."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False
