"""Run settings: one object that the CLI fills and every node reads."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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


@dataclass(kw_only=True)
class Settings:
    """Everything a run needs to know. CLI options map one-to-one onto these fields.

    Precedence: an explicit value (a CLI option) wins, then the environment variable
    named in the field's description, then the default.
    """

    run: str = field(default="default", metadata={"description": "Name of the run."})
    checkpoints: Path = field(
        default_factory=default_checkpoints_dir,
        metadata={"description": "Folder holding one sub-folder per run (env MMEVOL_CHECKPOINTS)."},
    )
    images: Path = field(default=Path("."), metadata={"description": "Image root folder."})
    model: str = field(default="gpt-4o-mini", metadata={"description": "Evolution model."})
    scorer_model: str | None = field(
        default=None, metadata={"description": "Judge model; the evolution model when unset."}
    )
    base_url: str | None = field(
        default=None,
        metadata={"description": "Endpoint (env OPENAI_BASE_URL, else OpenAI's)."},
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"description": "API key (env OPENAI_API_KEY). Never stored."},
    )
    temperature: float = 1.0
    max_tokens: int = 4096
    timeout: float = field(
        default=120.0, metadata={"description": "Seconds a model request may take."}
    )
    max_retries: int = field(
        default=5,
        metadata={
            "description": "Retries of a request that timed out, lost its connection "
            "or got 429/5xx (none once the run stops)."
        },
    )
    rounds: int = 3
    max_attempts: int = field(
        default=3, metadata={"description": "Evolution attempts per round before it ends empty."}
    )
    chunk_size: int = field(
        default=10, metadata={"description": "Items per evolution or judge call."}
    )
    concurrency: int = field(default=16, metadata={"description": "Samples in flight."})
    workers: int = field(
        default=1,
        metadata={"description": "Worker processes sharing the samples in flight (one core each)."},
    )
    seed: int = field(default=0, metadata={"description": "Seed of the operator choice."})
    image_max_side: int = 512
    image_detail: str = "low"
    jpeg_quality: int = 85
    limit: int | None = None
    structured_output: bool = field(
        default=False, metadata={"description": "Ask for JSON that follows the item schema."}
    )
    rpm: float | None = field(default=None, metadata={"description": "Requests per minute."})
    tpm: float | None = field(
        default=None, metadata={"description": "Tokens per minute (estimated before each call)."}
    )
    scorer_rpm: float | None = field(
        default=None,
        metadata={"description": "Judge requests per minute; shares --rpm when unset."},
    )
    scorer_tpm: float | None = field(
        default=None, metadata={"description": "Judge tokens per minute; shares --tpm when unset."}
    )
    max_cost: float | None = field(
        default=None, metadata={"description": "Stop cleanly once the run has spent this (USD)."}
    )
    max_calls: int | None = field(
        default=None, metadata={"description": "Stop cleanly after this many model calls."}
    )
    prices: Path | None = field(
        default=None, metadata={"description": "JSON price table (env MMEVOL_PRICES)."}
    )
    keep_history: bool = field(
        default=False,
        metadata={"description": "Keep every checkpoint of finished samples (for replay)."},
    )

    def __post_init__(self) -> None:
        """Fill unset values from the environment and check ranges."""
        self.checkpoints = Path(self.checkpoints)
        self.images = Path(self.images)
        if self.base_url is None:
            self.base_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY") or None
        check_run_name(self.run)
        for name in (
            "rounds",
            "max_attempts",
            "chunk_size",
            "concurrency",
            "max_tokens",
            "workers",
            "image_max_side",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("limit", self.limit, 0)
        _at_least("max_retries", self.max_retries, 0)
        _at_least("max_calls", self.max_calls, 1)
        for name in ("rpm", "tpm", "scorer_rpm", "scorer_tpm", "timeout"):
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
        if self.image_detail not in ("low", "high", "auto"):
            raise ValueError(f"--image-detail must be low, high or auto, got {self.image_detail!r}")

    def for_worker(self, index: int, count: int) -> Settings:
        """Return the settings of worker ``index`` of ``count``: its share of the limits.

        Samples in flight and the request and token rates are split as evenly as they go;
        the budgets are not split but counted across workers (see
        ``mmevol.graph.runtime.limits.Tally``).
        """
        share = self.concurrency // count + (1 if index < self.concurrency % count else 0)
        rates = {
            name: getattr(self, name) / count if getattr(self, name) else getattr(self, name)
            for name in ("rpm", "tpm", "scorer_rpm", "scorer_tpm")
        }
        return replace(self, concurrency=max(1, share), workers=1, **rates)

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
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def _option(name: str) -> str:
    """Return the command-line option of a settings field (``max_retries`` is ``--retries``)."""
    return "--" + {"max_retries": "retries"}.get(name, name).replace("_", "-")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(name: str, value: object, low: int) -> None:
    """Refuse a whole number below ``low`` (None means unset and passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_option(name)} must be at least {low}, got {value}")
