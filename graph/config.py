"""Run settings: one object that the CLI fills and every node reads."""

from __future__ import annotations

import contextlib
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
RUN_NAME_RULE = "use 1 to 100 ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-'"


def check_run_name(name: str) -> str:
    """Return ``name`` when it is a plain run name (a folder directly under --checkpoints).

    Raises:
        ValueError: the name is empty, ``.`` or ``..``, holds a path separator or another
            character outside the documented set, or starts with ``.`` or ``-``.
    """
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or name.startswith("-"):
        raise ValueError(f"bad run name {name!r}: {RUN_NAME_RULE}")
    return name


def default_checkpoints_dir() -> Path:
    """Return where runs live: ``$MMEVOL_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(os.environ.get("MMEVOL_CHECKPOINTS") or "checkpoints")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    env: str | None = None,
    flag: str | None = None,
    cli: bool = True,
    many: bool = False,
    results: bool = False,
    repr: bool = True,
) -> Any:
    """Declare one setting: its default, help text, environment fallback and CLI flag.

    ``env`` names the environment variable read when the value is unset (None);
    ``flag`` overrides the option name (``--`` + the field name with dashes); ``cli=False``
    keeps the field off the command line; ``many=True`` lets the option be given more than
    once (the field then receives a list). ``factory`` computes the default at construction.
    ``results=True`` marks a setting that changes what a run makes (see ``RESULT_SETTINGS``).
    """
    meta = {"help": help, "env": env, "flag": flag, "cli": cli, "many": many, "results": results}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


BATCH_MAX_REQUESTS = 50_000
"""Requests one Batch API input file may hold (OpenAI's limit); the sim's default too."""
BATCH_MAX_BYTES = 200_000_000
"""Bytes one Batch API input file may hold (OpenAI's 200 MB); the sim's default too."""


@dataclass(kw_only=True)
class Settings:
    """Everything a run needs to know, and the one declaration of `mmevol run`'s options.

    Each field is declared with ``option(default, help, env=..., flag=..., cli=...)`` and
    becomes the option ``--field-name`` of ``mmevol run``: ``cli.py`` builds the options
    from these fields (type, default and help come from here), and ``tests/test_cli.py``
    fails when the command and these fields disagree.

    To add an option, add a field with its help text, e.g.
    ``timeout: float = option(120.0, "Seconds to wait for one model answer.")`` for
    ``--timeout``, or ``option(5, "HTTP retries per call.", flag="--retries")`` for a flag
    named apart from its field. To check its value, add a line to ``__post_init__``: its
    ValueError becomes the CLI's one-line error. ``cli=False`` keeps a field off the
    command line (the API key, which would land in shell history).

    Precedence: an explicit value (a CLI option) wins, then the environment variable
    named by ``env``, then the default.

    ``results=True`` marks the settings that change what a run makes (its samples, items
    and scores): a resume may not change them (``mmevol run`` refuses), nor may the shards
    of one merge differ in them. The others say where and how calls are sent (endpoints,
    concurrency, timeouts, retries, rates, budgets, batch mode) and may change freely.
    """

    run: str = option(
        "default", "Run name: a folder under --checkpoints (letters, digits, '.', '_', '-')."
    )
    checkpoints: Path = option(
        factory=default_checkpoints_dir,
        help="Folder of runs.  [default: checkpoints]",
        env="MMEVOL_CHECKPOINTS",
    )
    images: Path = option(Path("."), "Image root folder.")
    rounds: int = option(3, "Evolution rounds.", results=True)
    concurrency: int = option(16, "Samples in flight.")
    workers: int = option(1, "Processes sharing the samples in flight (one core each).")
    limit: int | None = option(None, "Only the first N rows of the seed.")
    shard: str | None = option(
        None,
        "Only shard I of N of the seed (e.g. 2/3): the rows whose key hashes into it"
        " (of the first --limit rows).",
        results=True,
    )
    model: str = option("gpt-4o-mini", "Evolution model.", results=True)
    scorer_model: str | None = option(None, "Judge model [default: --model].", results=True)
    base_url: str | None = option(
        None,
        "OpenAI-compatible endpoint [default: OpenAI's]; repeat it to spread calls over"
        " several (the environment variable: URLs separated by spaces).",
        env="OPENAI_BASE_URL",
        many=True,
    )
    api_key: str | None = option(
        None, "API key. Never stored.", env="OPENAI_API_KEY", cli=False, repr=False
    )
    seed: int = option(0, "Seed of the operator choice.", results=True)
    temperature: float = option(1.0, "Sampling temperature.", results=True)
    max_tokens: int = option(4096, "Output token limit per call.", results=True)
    timeout: float = option(120.0, "Seconds a model request may take before it is given up.")
    max_retries: int = option(
        5,
        "Retries of a request that timed out, lost its connection or got 429/5xx"
        " (none once the run stops).",
        flag="--retries",
    )
    max_attempts: int = option(3, "Evolution attempts per round.", results=True)
    chunk_size: int = option(10, "Items per evolution or judge call.", results=True)
    image_max_side: int = option(512, "Downscale images to this many pixels.", results=True)
    image_detail: str = option("low", "Image detail: low, high or auto.", results=True)
    jpeg_quality: int = option(
        85, "JPEG quality of the downscaled images.", cli=False, results=True
    )
    structured_output: bool = option(
        False, "Ask for JSON following the item schema (falls back if refused).", results=True
    )
    rpm: float | None = option(None, "Requests per minute (both models).")
    tpm: float | None = option(None, "Tokens per minute (both models).")
    scorer_rpm: float | None = option(None, "Judge's own requests/minute.")
    scorer_tpm: float | None = option(None, "Judge's own tokens/minute.")
    max_cost: float | None = option(None, "Stop cleanly at this spend (USD).")
    max_calls: int | None = option(None, "Stop cleanly after N model calls.")
    prices: Path | None = option(None, "JSON price table override.", env="MMEVOL_PRICES")
    keep_history: bool = option(False, "Keep every checkpoint of finished samples (for replay).")
    batch: bool = option(
        False, "Send model calls through the Batch API: half the price, answers within 24 h."
    )
    batch_dir: Path | None = option(
        None,
        "Batch mode through a folder: write shards as batch JSONL files there and read the"
        " result files placed beside them (vllm run-batch). Implies --batch.",
    )
    batch_flush: float = option(
        600.0, "Submit a batch shard that has waited this many seconds for more requests."
    )
    batch_poll: float = option(30.0, "Seconds between checks of submitted batches.")
    batch_fallback: float | None = option(
        None, "Send batch requests still unanswered after this many hours through the online API."
    )
    batch_max_requests: int = option(
        BATCH_MAX_REQUESTS, "Requests per batch shard (OpenAI's limit)."
    )
    batch_max_bytes: int = option(
        BATCH_MAX_BYTES, "Bytes per batch shard file (OpenAI's limit: 200 MB)."
    )
    gates: str | None = option(
        None,
        "Quality gates after each round's judge, comma-separated: blind (ask each kept item"
        " without its image), judge2 (a second judge scores it) [default: none].",
        results=True,
    )
    blind_model: str | None = option(
        None, "Model of the blind gate's answers [default: --model].", results=True
    )
    judge2_model: str | None = option(
        None,
        "Second judge of --gates judge2, ideally another family [default: the judge].",
        results=True,
    )

    def __post_init__(self) -> None:
        """Fill unset values from the environment and check ranges."""
        for f in fields(self):
            env = f.metadata.get("env")
            if env and getattr(self, f.name) is None:
                setattr(self, f.name, os.environ.get(env) or None)
        self.checkpoints = Path(self.checkpoints)
        # Recorded absolute, so that export and report find the images from any folder.
        self.images = Path(os.path.abspath(self.images))
        self.prices = Path(self.prices) if self.prices else None
        self.batch_dir = Path(self.batch_dir) if self.batch_dir else None
        self.batch = bool(self.batch or self.batch_dir)
        self.base_url = " ".join(split_urls(self.base_url)) or OPENAI_DEFAULT_BASE_URL
        check_run_name(self.run)
        self.gates = parse_gates(self.gates)
        for name in (
            "rounds",
            "max_attempts",
            "chunk_size",
            "concurrency",
            "max_tokens",
            "workers",
            "image_max_side",
            "batch_max_requests",
            "batch_max_bytes",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("limit", self.limit, 0)
        _at_least("max_retries", self.max_retries, 0)
        _at_least("max_calls", self.max_calls, 1)
        if self.batch and self.workers > 1:
            raise ValueError(
                "--batch runs in one process (it waits on the Batch API, not on a CPU):"
                f" drop --workers {self.workers}"
            )
        for name in (
            "rpm",
            "tpm",
            "scorer_rpm",
            "scorer_tpm",
            "timeout",
            "batch_flush",
            "batch_poll",
            "batch_fallback",
        ):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value > 0):
                raise ValueError(f"{_option(name)} must be a positive number, got {value}")
        if self.max_cost is not None and not (_finite(self.max_cost) and self.max_cost >= 0):
            raise ValueError(
                f"--max-cost must be a number of dollars, 0 or more, got {self.max_cost}"
            )
        if not (_finite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature must be a number, 0 or more, got {self.temperature}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg-quality must be from 1 to 100, got {self.jpeg_quality}")
        if self.shard is not None:
            self.shard = "{}/{}".format(*parse_shard(self.shard))
        if self.image_detail not in ("low", "high", "auto"):
            raise ValueError(f"--image-detail must be low, high or auto, got {self.image_detail!r}")

    def for_worker(self, index: int, count: int) -> Settings:
        """Return the settings of worker ``index`` of ``count``: its share of the limits.

        Samples in flight and the request and token rates are split as evenly as they go;
        the budgets are not split but counted across workers (see
        ``mmevol.runtime.limits.Tally``).
        """
        share = self.concurrency // count + (1 if index < self.concurrency % count else 0)
        rates = {
            name: getattr(self, name) / count if getattr(self, name) else getattr(self, name)
            for name in ("rpm", "tpm", "scorer_rpm", "scorer_tpm")
        }
        return replace(self, concurrency=max(1, share), workers=1, **rates)

    @property
    def shard_of(self) -> tuple[int, int] | None:
        """Return the shard as (I, N), or None for the whole seed."""
        return parse_shard(self.shard) if self.shard is not None else None

    @property
    def base_urls(self) -> tuple[str, ...]:
        """Return the endpoints of the run, in the order given (one for most runs)."""
        return tuple(self.base_url.split())

    @property
    def gate_set(self) -> tuple[str, ...]:
        """Return the quality gates of the run, in their order (empty without --gates)."""
        return tuple(self.gates.split(",")) if self.gates else ()

    @property
    def judge_model(self) -> str:
        """Return the model that scores items."""
        return self.scorer_model or self.model

    @property
    def run_dir(self) -> Path:
        """Return the folder of this run's databases."""
        return self.checkpoints / self.run

    @property
    def graph_db(self) -> Path:
        """Return the LangGraph checkpoint database of this run."""
        return self.run_dir / "graph.sqlite"

    @property
    def results_db(self) -> Path:
        """Return the results database of this run."""
        return self.run_dir / "results.db"

    def public(self) -> dict:
        """Return the settings as JSON-ready values, without the API key."""
        data = asdict(self)
        data.pop("api_key")
        urls = [without_credentials(url) for url in self.base_urls]
        # One endpoint stays a string, as 0.1.0 recorded it.
        data["base_url"] = urls if len(urls) > 1 else urls[0]
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


RESULT_SETTINGS = tuple(f.name for f in fields(Settings) if f.metadata.get("results"))
"""The settings that change what a run makes (declared by ``option(..., results=True)``)."""


def result_values(recorded: dict) -> dict[str, Any]:
    """Return the result-changing settings of a recorded (``public()``) settings dict.

    Values that make the same run are made equal: no ``scorer_model`` is the evolution
    model, and shard ``1/1`` is the whole seed. Settings a run did not record (an older
    version) are left out, so they compare as unknown rather than as changed.
    """
    values = {name: recorded[name] for name in RESULT_SETTINGS if name in recorded}
    if "scorer_model" in values:
        values["scorer_model"] = values["scorer_model"] or recorded.get("model")
    if values.get("shard") is not None:
        with contextlib.suppress(ValueError):
            values["shard"] = "{}/{}".format(*parse_shard(values["shard"]))
        if values["shard"] == "1/1":
            values["shard"] = None
    return values


def changed_results(
    recorded: dict, now: dict, skip: Iterable[str] = ()
) -> list[tuple[str, Any, Any]]:
    """Return the result-changing settings that differ: (option, recorded value, value now).

    Both are settings dicts as ``Settings.public()`` makes them; ``skip`` names settings
    not compared (``mmevol merge`` compares shards on their own).
    """
    old, new = result_values(recorded), result_values(now)
    return [
        (_option(name), old[name], new[name])
        for name in RESULT_SETTINGS
        if name not in skip and name in old and name in new and old[name] != new[name]
    ]


def without_credentials(url: str) -> str:
    """Return a URL without the user name and password it may carry (never recorded)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


GATES = ("blind", "judge2")


def parse_gates(value: object) -> str | None:
    """Return ``--gates`` as its gates in canonical order joined by commas, or None for none.

    Raises:
        ValueError: a name is not a known gate.
    """
    if value is None:
        return None
    names = value if isinstance(value, list | tuple) else str(value).split(",")
    wanted = {str(n).strip().lower() for n in names} - {"", "none"}
    unknown = sorted(wanted - set(GATES))
    if unknown:
        raise ValueError(f"--gates: unknown gate {unknown[0]!r}; use {', '.join(GATES)}")
    return ",".join(g for g in GATES if g in wanted) or None


SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")


def parse_shard(text: object) -> tuple[int, int]:
    """Return shard ``"I/N"`` as (I, N), with I counting from 1.

    Raises:
        ValueError: the text is not two whole numbers ``I/N`` with 1 <= I <= N.
    """
    match = SHARD.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"--shard must be I/N, two whole numbers such as 2/3, got {text!r}")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ValueError(
            f"--shard I/N needs 1 <= I <= N (shards count from 1: 1/{max(count, 1)} is the"
            f" first), got {text!r}"
        )
    return index, count


def split_urls(value: str | list | tuple | None) -> list[str]:
    """Return the endpoint URLs of a ``base_url`` value, each once, in the order given.

    The value is one URL, several separated by whitespace (``OPENAI_BASE_URL``, a recorded
    run), or a list of them (a repeated ``--base-url``, a run recorded with several).
    """
    if value is None:
        return []
    parts = value.split() if isinstance(value, str) else [u for v in value for u in str(v).split()]
    return list(dict.fromkeys(parts))


def _option(name: str) -> str:
    """Return a field's command-line option: its ``flag`` (``--retries``), else ``--field-name``."""
    flag = Settings.__dataclass_fields__[name].metadata.get("flag")
    return flag or "--" + name.replace("_", "-")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(name: str, value: object, low: int) -> None:
    """Refuse a whole number below ``low`` (None means unset and passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_option(name)} must be at least {low}, got {value}")
