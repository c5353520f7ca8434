"""Training-set exports of a run: LLaVA, LLaMA-Factory ShareGPT and Hugging Face datasets.

One record is made per kept round of a finished sample (and per sample's seed items when
round 0 is asked for). Records stream from ``results.db`` through ``Store.export_rows``,
are validated one by one (a record with a problem is skipped, counted and named by sample
and round; its image must be a readable image inside the image root, see
``mmevol.runtime.images.check``), and are written to a temporary file renamed into place
at the end (``mmevol.outputs.trust.write_whole``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from mmevol.graph.items import QAItem
from mmevol.outputs import trust
from mmevol.run.seed import turns_to_items
from mmevol.runtime import images
from mmevol.store.results import Store

FORMATS = ("authors", "llava", "sharegpt", "hf")
TRAINING_FORMATS = ("llava", "sharegpt", "hf")
STEP_MODES = ("inline", "none", "field")
DEFAULT_ROUNDS = (1, 2, 3)
DEFAULT_STEPS = "inline"
IMAGE_TOKEN = "<image>"
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

    def __post_init__(self) -> None:
        """Check the options (a bad one is a one-line ValueError)."""
        if self.steps not in STEP_MODES:
            raise ValueError(f"--steps must be one of {', '.join(STEP_MODES)}, not {self.steps!r}")
        if not self.rounds:
            raise ValueError("--rounds names no round")
        if any(r < 0 for r in self.rounds):
            raise ValueError(f"--rounds must be 0 or more, not {list(self.rounds)}")
        self.rounds = tuple(sorted(set(self.rounds)))
        if self.image_max_side is not None and self.image_max_side < 16:
            raise ValueError("--image-max-side must be at least 16 pixels")


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


def clean_text(value: Any) -> str:
    """Return an item's text without stray image tokens (the record places its own)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return value.replace(IMAGE_TOKEN, "").strip()


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


def _pairs(items: list[dict], min_score: int | None, rnd: int) -> list[Pair]:
    pairs = []
    for item in items:
        score = item.get("score")
        if rnd > 0 and min_score is not None and (score is None or score < min_score):
            continue
        steps = [
            {
                "manipulation": clean_text(s.get("manipulation")) or "None",
                "description": clean_text(s.get("description")),
            }
            for s in item.get("steps") or []
            if isinstance(s, dict)
        ]
        pairs.append(
            Pair(clean_text(item.get("question")), clean_text(item.get("answer")), steps, score)
        )
    return pairs


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
    """Files written beside the output (dataset_info.json, the dataset card)."""
    pushed_to: str | None = None

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
        return line


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
    checked: tuple[str, Path] | None = None  # the last image that passed, and its file
    for sample in store.export_rows(run_rounds):
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
            pairs = _pairs(items, options.min_score, rnd)
            if not pairs:
                report.below_min_score += 1
                continue
            record = Record(hash_id, rnd, image, root / image, pairs, source_id)
            seen = checked is not None and checked[0] == image
            if seen:
                record.image_file = checked[1]
            try:
                check_record(record, root, image_seen=seen)
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
            made = True
            yield record
        report.samples += made


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
        "image": record.image,
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
        "images": [str(record.image_file.resolve())],
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


def write_json_records(
    output: Path,
    records: Iterator[dict],
    report: ExportReport,
    lines: bool,
    accept: Callable[[None], None] | None = None,
) -> None:
    """Stream records into a JSON list (or JSON lines) file, put in place when whole.

    See ``mmevol.outputs.trust.write_whole``: ``accept`` may refuse what was written, a
    symlink is written through and a device directly.
    """
    trust.write_whole(output, lambda fh: _write_stream(fh, records, report, lines), accept)


def _write_stream(fh: TextIO, records: Iterator[dict], report: ExportReport, lines: bool) -> None:
    if not lines:
        fh.write("[")
    for record in records:
        text = json.dumps(record, ensure_ascii=False)
        if lines:
            fh.write(text + "\n")
        else:
            fh.write((",\n" if report.written else "\n") + text)
        report.written += 1
    if not lines:
        fh.write("\n]\n")


def _shaped(
    records: Iterator[Record],
    shape: Callable[[Record, str], dict],
    options: ExportOptions,
    report: ExportReport,
) -> Iterator[dict]:
    for record in records:
        try:
            out = shape(record, options.steps)
        except RecordProblem as problem:
            report.skip(problem)
            continue
        report.per_round[record.round] += 1
        report.items_per_round[record.round] += len(record.pairs)
        yield out


def write_dataset_info(output: Path, name: str) -> Path:
    """Add (or replace) this export's entry in the dataset_info.json beside it."""
    info_path = output.parent / "dataset_info.json"
    info = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{info_path} is not valid JSON ({err}); fix or remove it") from err
    info[name] = dataset_info_entry(output)
    text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    trust.write_whole(info_path, lambda fh: fh.write(text))
    return info_path


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
    if fmt != "hf" and (options.image_max_side or options.push_to_hub):
        raise ValueError("--image-max-side and --push-to-hub apply to --format hf only")


def export_records(
    results_db: Path, output: Path, fmt: str, options: ExportOptions | None = None
) -> ExportReport:
    """Write a run's kept rounds as JSON training records in ``fmt`` (llava or sharegpt).

    ``mmevol.outputs.training.export_training`` picks this or the ``hf`` writer by format.
    """
    options = options or ExportOptions()
    check_request(fmt, options)
    if fmt == "hf":
        raise ValueError("--format hf is written by mmevol.outputs.hfexport.export_hf")
    report = ExportReport(output=output, format=fmt)
    with Store(results_db) as store:
        trust.check_output(output, results_db, store.get_meta("seed"))
        root = image_root(store, options.images)
        records = iter_records(store, options, report, root)
        shape = llava_record if fmt == "llava" else sharegpt_record
        lines = output.suffix.lower() == ".jsonl"
        done = store.status_counts().get("done", 0)
        write_json_records(
            output,
            _shaped(records, shape, options, report),
            report,
            lines,
            accept=lambda _: report.check_found(root, done),
        )
    if fmt == "sharegpt" and _is_file(
        output
    ):  # a device (/dev/stdout) has no folder to register in
        report.files.append(write_dataset_info(output, output.stem))
    return report


def _is_file(path: Path) -> bool:
    """Tell whether ``path`` is (or links to) a regular file."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False
