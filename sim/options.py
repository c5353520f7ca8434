"""How the simulated endpoint behaves (its own module: the server and the answers both read it)."""

from __future__ import annotations

from dataclasses import dataclass

from mmevol.graph.config import BATCH_MAX_BYTES, BATCH_MAX_REQUESTS


@dataclass
class SimOptions:
    """How the simulated endpoint behaves; every rate is a share of requests in 0..1."""

    seed: int = 0
    latency_ms: float = 0.0
    latency_dist: str = "fixed"
    """ "fixed", or "heavy": lognormal with ``latency_ms`` as its median and a long tail."""
    error_rate: float = 0.0
    """Share answered with HTTP 500."""
    rate_limit_rate: float = 0.0
    """Share answered with HTTP 429 and a Retry-After header."""
    retry_after: float = 0.05
    """Seconds sent in Retry-After (and in retry-after-ms); small so tests stay fast."""
    garbage_rate: float = 0.0
    """Share answered 200 with unusable text: empty, a refusal, an HTML page or prose."""
    truncate_rate: float = 0.0
    """Share cut in the middle with finish_reason "length"."""
    surrogate_rate: float = 0.0
    """Share holding a lone surrogate (sent escaped in the JSON, ``\\ud800``), which is not
    text: no UTF-8 encoder takes it, as a broken model or proxy may send."""
    verdict_mismatch_rate: float = 0.0
    """Share of judge answers with one verdict fewer or more than asked."""
    no_rate: float = 0.3
    """Share of judge verdicts that are "no"."""
    blind_rate: float = 0.3
    """Share of blind-gate questions (``--gates blind``) answered without the image; the
    rest are refused. Drawn per question (``sim.answers.answers_blind``)."""
    clean: bool = False
    """Answer pure fenced JSON, without the small imperfections real models show."""
    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <api_key>``."""
    reject_structured: bool = False
    """Refuse ``response_format`` of type json_schema with HTTP 400, as some servers do."""
    model: str = "sim-gpt-4o-mini"
    """The model id /v1/models lists; any requested model is accepted anyway."""
    cached_share: float = 0.0
    """Share of every prompt's tokens reported as read from a prompt cache (rounded down),
    in ``usage.prompt_tokens_details.cached_tokens`` as OpenAI reports it; 0 reports no
    details. A fixed share, not a real cache: the same request always reports the same."""
    batch_turnaround: float = 0.0
    """Seconds a batch takes: its lines are answered progressively over this time."""
    batch_failed_lines: float = 0.0
    """Share of batch lines that fail with a 500 (in the error file) instead of an answer."""
    batch_expire_after: float | None = None
    """Seconds after creation when a batch not done expires, keeping its partial output."""
    batch_max_requests: int = BATCH_MAX_REQUESTS
    """Lines a batch input file may hold (OpenAI's limit)."""
    batch_max_bytes: int = BATCH_MAX_BYTES
    """Bytes a batch input file may hold (OpenAI's 200 MB)."""

    def __post_init__(self) -> None:
        """Check the rates and the latency distribution."""
        rates = ("error_rate", "rate_limit_rate", "garbage_rate", "truncate_rate",
                 "surrogate_rate", "verdict_mismatch_rate", "no_rate", "cached_share", "blind_rate",
                 "batch_failed_lines")  # fmt: skip
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_dist not in ("fixed", "heavy"):
            raise ValueError('latency_dist must be "fixed" or "heavy"')
        if self.latency_ms < 0 or self.retry_after < 0:
            raise ValueError("latency_ms and retry_after must not be negative")
        if self.batch_turnaround < 0 or (self.batch_expire_after or 0) < 0:
            raise ValueError("batch_turnaround and batch_expire_after must not be negative")
        if self.batch_max_requests < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_requests and batch_max_bytes must be positive")
