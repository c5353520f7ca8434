"""The ``hf`` export: a Hugging Face dataset folder (Parquet shards, embedded images, card).

Needs the ``mmevol[hf]`` extra (``datasets``, which brings ``pyarrow`` and
``huggingface_hub``). Records are written in row groups of a few hundred as they stream,
so memory stays flat whatever the run's size.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from mmevol.outputs import trust
from mmevol.outputs.formats import (
    ExportOptions,
    ExportReport,
    Record,
    RecordProblem,
    _shaped_records,
    answer_text,
    check_output,
    check_turns,
    image_root,
    iter_records,
    part_path,
    replace_dir,
    run_settings,
    split_of,
)
from mmevol.store.results import Store

ROW_GROUP_RECORDS = 256
ROW_GROUP_BYTES = 64 * 1024 * 1024
SHARD_BYTES = 500 * 1024 * 1024
"""A new Parquet shard starts past this size (the Hub's advice is a few hundred MB)."""

STATISTICS = ["id", "hash_id", "source_id", "round", "image_path"]
"""Columns whose Parquet statistics are written (not the images, not the turns)."""

CITATION = """@article{luo2024mmevol,
  title   = {MMEvol: Empowering Multimodal Large Language Models with Evol-Instruct},
  author  = {Luo, Run and Zhang, Haonan and Chen, Longze and Lin, Ting-En and Liu, Xiong
             and Wu, Yuchuan and Yang, Min and Wang, Minzheng and Zeng, Pengpeng
             and Gao, Lianli and others},
  journal = {arXiv preprint arXiv:2409.05840},
  year    = {2024}
}"""


def features(steps: str, image_column: bool = True):
    """Return the dataset's features (the schema the Parquet files carry)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    columns: dict[str, Any] = {
        "id": Value("string"),
        "hash_id": Value("string"),
        "source_id": Value("string"),
        "round": Value("int32"),
        "image": Image(),
        "images": List(Image()),
        "image_path": Value("string"),
        "messages": List({"role": Value("string"), "content": List(part)}),
        "scores": List(Value("int32")),
    }
    if not image_column:
        del columns["image"]
    if steps == "field":
        columns["steps"] = List(
            List({"manipulation": Value("string"), "description": Value("string")})
        )
    return Features(columns)


def content_parts(text: str, image: bool) -> list[dict]:
    """Return a turn's content as parts: ``{"type": "image"}`` first when it carries the image."""
    parts = [{"type": "image", "text": None}] if image else []
    return [*parts, {"type": "text", "text": text}]


def hf_record(record: Record, steps: str) -> dict:
    """Return one dataset row (the image still a path; bytes are added when written).

    ``messages`` is in the layout of chat templates of vision processors (and TRL): each
    turn's content a list of parts, the first user turn's starting with an image part.
    """
    turns = []
    for pair in record.pairs:
        turns.append(("user", pair.question))
        turns.append(("assistant", answer_text(pair, steps)))
    # The image is its own column: the text carries no image token, so the check places
    # one only for its own rule (exactly once, first turn) and the row keeps the text clean.
    check_turns([(turns[0][0], "<image>" + turns[0][1]), *turns[1:]], record, "user", "assistant")
    row: dict[str, Any] = {
        "id": record.id,
        "hash_id": record.hash_id,
        "source_id": record.source_id,
        "round": record.round,
        "image": record.image_file,
        "image_path": record.image,
        "messages": [
            {"role": role, "content": content_parts(text, n == 0)}
            for n, (role, text) in enumerate(turns)
        ],
        "scores": [pair.score for pair in record.pairs],
    }
    if steps == "field":
        row["steps"] = [pair.steps for pair in record.pairs]
    return row


class ImageBytes:
    """Read (and optionally downscale) image files, remembering the last one."""

    def __init__(self, max_side: int | None):
        """Downscale to ``max_side`` pixels a side when given."""
        self.max_side = max_side
        self._last: tuple[Path, dict] | None = None

    def __call__(self, path: Path, name: str) -> dict:
        """Return the Image feature's storage for one file: bytes and a file name."""
        if self._last and self._last[0] == path:
            return self._last[1]
        data = path.read_bytes()
        if self.max_side:
            data, name = self._downscale(data, name)
        value = {"bytes": data, "path": name}
        self._last = (path, value)
        return value

    def _downscale(self, data: bytes, name: str) -> tuple[bytes, str]:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            if max(img.size) <= self.max_side:
                return data, name
            img.thumbnail((self.max_side, self.max_side))
            buf = io.BytesIO()
            if img.mode in ("RGBA", "LA", "P"):
                img.save(buf, format="PNG")
                suffix = ".png"
            else:
                img.convert("RGB").save(buf, format="JPEG", quality=90)
                suffix = ".jpg"
        return buf.getvalue(), str(Path(name).with_suffix(suffix))


class ShardWriter:
    """Write rows to Parquet shards ``data/train-XXXXX-of-YYYYY.parquet`` under a folder."""

    def __init__(
        self,
        folder: Path,
        features,
        shard_bytes: int = SHARD_BYTES,
        group_records: int = ROW_GROUP_RECORDS,
        split: str = "train",
    ):
        """Write under ``folder/data`` with the schema of ``features``, as ``split``'s shards."""
        self.group_records = group_records
        self.split = split
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.features = features
        self.schema = features.arrow_schema
        self.shard_bytes = shard_bytes
        self.shards: list[Path] = []
        self._writer = None
        self._rows: list[dict] = []
        self._buffered = 0
        self._shard_size = 0
        self.arrow_bytes = 0
        """Bytes of the Arrow tables written: what ``datasets`` calls a split's ``num_bytes``."""

    def add(self, row: dict, size: int) -> None:
        """Buffer one row of about ``size`` bytes; write a row group when enough are."""
        self._rows.append(row)
        self._buffered += size
        if len(self._rows) >= self.group_records or self._buffered >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        if self._writer is None:
            path = self.data / f"{self.split}.shard-{len(self.shards):05d}.parquet"
            self.shards.append(path)
            # Statistics (min/max) of the image bytes would copy two images per row group
            # into the footer, which the writer keeps in memory until it closes.
            self._writer = pq.ParquetWriter(path, self.schema, write_statistics=STATISTICS)
            self._shard_size = 0
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table)
        self.arrow_bytes += table.nbytes
        self._shard_size += self._buffered
        self._rows, self._buffered = [], 0
        if self._shard_size >= self.shard_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Write what is buffered, close, and give the shards their final names."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        if self._writer is not None:
            self._writer.close()
        if not self.shards:
            # No record at all: one empty shard keeps the folder loadable.
            path = self.data / f"{self.split}.shard-00000.parquet"
            pq.write_table(pa.Table.from_pylist([], schema=self.schema), path)
            self.shards.append(path)
        total = len(self.shards)
        final = []
        for n, path in enumerate(self.shards):
            target = self.data / f"{self.split}-{n:05d}-of-{total:05d}.parquet"
            path.rename(target)
            final.append(target)
        return final


def size_category(n: int) -> str:
    """Return the Hub's size category for ``n`` rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ]
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>1T" if n > 10**12 else "100M<n<1B" if n < 10**9 else "1B<n<10B"


def run_facts(store: Store) -> dict:
    """Return what the dataset card says about the run: models, rounds, seed, cost."""
    from mmevol.runtime.prices import PriceTable

    settings = run_settings(store)
    summary = store.summary()
    try:
        prices = PriceTable(settings.get("prices"))
    except (OSError, ValueError):
        prices = PriceTable(None)
    cost = sum(prices.row_cost(m) for m in summary["models"])
    return {
        "run": settings.get("run"),
        "evolution_model": settings.get("model"),
        "judge_model": settings.get("scorer_model") or settings.get("model"),
        "rounds": settings.get("rounds", 3),
        "operator_seed": settings.get("seed"),
        "seed_file": Path(str(store.get_meta("seed") or "")).name or None,
        "samples": summary["samples"],
        "calls": sum(c["calls"] for c in summary["calls"]),
        "input_tokens": sum(m["input_tokens"] for m in summary["models"]),
        "output_tokens": sum(m["output_tokens"] for m in summary["models"]),
        "cost_usd": round(cost, 4),
        **({"gates": settings["gates"]} if settings.get("gates") else {}),
    }


def quality_lines(facts: dict, report: ExportReport) -> str:
    """Return the card's lines on the run's quality gates and the export's filters (or "")."""
    lines = ""
    if facts.get("gates"):
        lines += f"\n- Quality gates of the run: {facts['gates']} (scored per item, none deleted)"
    filtered = report.filtered
    if filtered.applied:
        parts = [
            f"{name} left out {filtered.left_out[name]} of {filtered.checked[name]} items"
            + (
                f" ({filtered.samples_left_out[name]} whole samples)"
                if filtered.samples_left_out[name]
                else ""
            )
            for name in ("require-image", "min-agreement", "decontaminate", "dedup")
            if any(a.startswith(name) for a in filtered.applied)
        ]
        lines += "\n- Export filters: " + "; ".join(parts)
    return lines


def dataset_card(report: ExportReport, facts: dict, options: ExportOptions) -> str:
    """Return README.md: the YAML header the Hub reads, then what the dataset holds."""
    import yaml

    per_round = {f"v{r}": n for r, n in sorted(report.per_round.items())}
    items = {f"v{r}": n for r, n in sorted(report.items_per_round.items())}
    splits = split_sizes(report, options)
    header = {
        "pretty_name": f"MMEvol run {facts['run']}",
        "license": options.license or "other",
        "language": ["en"],
        "size_categories": [size_category(report.written)],
        "task_categories": ["visual-question-answering", "image-text-to-text"],
        "tags": ["mmevol", "evol-instruct", "synthetic", "multimodal"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": name, "path": f"data/{name}-*.parquet"} for name in splits
                ],
            }
        ],
        "dataset_info": {
            # Name, records and Arrow bytes of each split: what `datasets` checks the card
            # for (it warns and ignores the splits without all three).
            "splits": [
                {"name": name, "num_bytes": report.split_bytes[name], "num_examples": n}
                for name, n in splits.items()
            ]
        },
        "mmevol": {
            **facts,
            "exported_rounds": list(options.rounds),
            "min_score": options.min_score,
            "steps": options.steps,
            "records_per_round": per_round,
            "items_per_round": items,
            "records_per_split": dict(splits),
            "split": None if options.split is None else f"{options.split[0]}={options.split[1]}",
            **({"filters": report.filtered.as_dict()} if report.filtered.applied else {}),
        },
    }
    models = facts["evolution_model"]
    if facts["judge_model"] != models:
        models = f"{models} (evolution), {facts['judge_model']} (judge)"
    image_column = (
        "\n- `image`: the same image, on its own (one image a row)" if options.image_column else ""
    )
    steps_column = (
        "\n- `steps`: the solving steps of each pair (`manipulation`, `description`)"
        if options.steps == "field"
        else ""
    )
    rows = "\n".join(
        f"| v{r} | {report.per_round[r]} | {report.items_per_round[r]} |"
        for r in sorted(report.per_round)
    )
    samples = ", ".join(f"{k} {v}" for k, v in sorted(facts["samples"].items()))
    split_line = ", ".join(f"{name} {n}" for name, n in splits.items())
    if options.split:
        name, fraction = options.split
        split_line += f" (`{name}` takes {fraction:g} of the samples, by hash_id)"
    license_line = (
        f"License: `{options.license}`."
        if options.license
        else "**License: not set.** Replace `license: other` in the header with the license"
        " that the seed's images and the models' terms allow (the exporter cannot know it)."
    )
    body = f"""
# MMEvol run `{facts["run"]}`

Image-grounded Q&A evolved with the MMEvol method (Evol-Instruct for multimodal data) by
[mmevol](https://arxiv.org/abs/2409.05840): {facts["rounds"]} rounds of rewriting by a
multimodal model, each followed by a judge that keeps only the items that improved.

- Models: {models}
- Rounds: {facts["rounds"]}; records made from versions {", ".join(f"v{r}" for r in options.rounds)}
- Operator seed: {facts["operator_seed"]}; seed file: `{facts["seed_file"]}`
- Samples of the run: {samples}
- Model calls: {facts["calls"]}, tokens {facts["input_tokens"]} in / {facts["output_tokens"]} out,
  cost ${facts["cost_usd"]:.4f}
- Minimum judge score: {options.min_score if options.min_score is not None else "none"};
  solving steps: {options.steps}
- Records written: {report.written}; skipped: {sum(report.skipped.values())}
- Splits: {split_line}{quality_lines(facts, report)}

{license_line}

| version | records | Q&A pairs |
|---|---|---|
{rows}

## Columns
- `id`: `<hash_id>_v<round>`; `hash_id`, `source_id` (the seed's `id`), `round` (0 = seed items)
- `images`: the record's image, embedded, as a one-image list (the column TRL reads){image_column}
- `image_path`: the image's path under the run's image root
- `messages`: alternating `user` / `assistant` turns, one pair per Q&A item of the round; each
  turn's `content` is a list of parts (`{{"type": "text", "text": ...}}`), the first user turn's
  starting with `{{"type": "image"}}`, as the chat templates of vision processors expect
- `scores`: the judge's score of each pair (null for seed items){steps_column}

## Citation
```bibtex
{CITATION}
```
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


def split_sizes(report: ExportReport, options: ExportOptions) -> dict[str, int]:
    """Return the records of each split, train first (one split, train, without --split)."""
    if options.split is None:
        return {"train": report.written}
    return {name: report.splits[name] for name in ("train", options.split[0])}


def hub_token() -> str:
    """Return the Hugging Face token, or raise ValueError saying how to provide one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ValueError(
            "--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"
        )
    return token


def push(folder: Path, repo_id: str, token: str) -> None:
    """Upload the dataset folder to a Hub dataset repository (created when missing)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")


def export_hf(
    results_db: Path,
    output: Path,
    options: ExportOptions,
    shard_bytes: int = SHARD_BYTES,
    group_records: int = ROW_GROUP_RECORDS,
) -> ExportReport:
    """Write the run as a dataset folder: data/<split>-*.parquet (one per split), README.md.

    Only images checked by ``iter_records`` are embedded (readable images inside the
    image root). The folder is built beside ``output`` and replaces it once whole; a
    symlink to a folder is written through (its target replaced, the link kept).

    Raises:
        ExportProblem: ``output`` is a file, is or holds the run's folder or seed, or the
            export found too few images (``ExportReport.check_found``). Nothing is
            written or pushed then.
    """
    from mmevol.outputs.formats import require_extra

    require_extra("hf", "datasets", "pyarrow", "huggingface_hub", "yaml")
    report = ExportReport(output=output, format="hf")
    if output.exists() and not output.is_dir():
        raise trust.ExportProblem(
            f"-o {str(output)!r} is not a folder: --format hf writes a folder of Parquet shards"
        )
    with Store(results_db) as store:
        trust.check_output(output, results_db, store.get_meta("seed"), folder=True)
    check_output("hf", output)
    token = hub_token() if options.push_to_hub else None  # fail before the long part
    output = trust.real_path(output)  # through a symlink
    tmp = part_path(output)
    if tmp.exists():
        shutil.rmtree(tmp)
    names = ["train"] if options.split is None else ["train", options.split[0]]
    with Store(results_db) as store:
        records = None
        try:
            root = image_root(store, options.images)
            schema = features(options.steps, options.image_column)
            writers = {
                name: ShardWriter(tmp, schema, shard_bytes, group_records, name) for name in names
            }
            images = ImageBytes(options.image_max_side)
            records = iter_records(store, options, report, root)
            for record, row in _shaped_records(records, hf_record, options, report):
                try:
                    image = images(row.pop("image"), row["image_path"])
                except OSError as err:
                    # Counted as written by _shaped; take it back.
                    report.per_round[row["round"]] -= 1
                    report.items_per_round[row["round"]] -= len(row["messages"]) // 2
                    report.skip(
                        RecordProblem(
                            "image unreadable", row["hash_id"], row["round"], f"image: {err}"
                        )
                    )
                    continue
                row["images"] = [image]
                copies = 1
                if options.image_column:
                    row["image"] = image
                    copies = 2
                name = split_of(record.hash_id, options.split)
                size = copies * len(image["bytes"]) + 200 * len(row["messages"])
                writers[name].add(row, size)
                report.written += 1
                if options.split:
                    report.splits[name] += 1
            for name, writer in writers.items():
                writer.close()
                report.split_bytes[name] = writer.arrow_bytes
            report.check_found(root, store.status_counts().get("done", 0))
            facts = run_facts(store)
        except BaseException:
            if records is not None:
                records.close()  # the filters' scratch file goes now, not when collected
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    (tmp / "README.md").write_text(dataset_card(report, facts, options), encoding="utf-8")
    replace_dir(tmp, output)
    report.files.append(report.output / "README.md")
    if options.push_to_hub:
        push(output, options.push_to_hub, token)
        report.pushed_to = options.push_to_hub
    return report
