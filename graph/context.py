"""The run context every node receives: settings, store, model client and image encoder.

It is LangGraph's runtime context, passed to each invocation and never checkpointed, so
the API key inside the settings cannot reach the checkpoint database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mmevol.graph.config import Settings
from mmevol.runtime.encoder import ImageEncoder
from mmevol.runtime.llm import ModelClient
from mmevol.store.results import Store


@dataclass
class RunContext:
    """What nodes need besides their state."""

    settings: Settings
    store: Store
    client: ModelClient
    images: ImageEncoder = field(default_factory=lambda: ImageEncoder(helper=False))
    """Encodes sample images; the batch runner's uses a helper process and closes it."""


_from_env: RunContext | None = None


def context_of(runtime: Any) -> RunContext:
    """Return the run context of a node call.

    The batch runner, trace and replay always pass one. A host that cannot, such as
    LangGraph Studio (``langgraph dev``), gets one built once from the environment:
    ``OPENAI_*`` for the endpoint, ``MMEVOL_CHECKPOINTS`` and ``MMEVOL_RUN`` (default
    "studio") for where results go, ``MMEVOL_IMAGES`` for the image root.
    """
    if isinstance(runtime.context, RunContext):
        return runtime.context
    global _from_env
    if _from_env is None:
        settings = Settings(
            run=os.environ.get("MMEVOL_RUN", "studio"),
            images=os.environ.get("MMEVOL_IMAGES", "."),
        )
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.results_db)
        _from_env = RunContext(settings, store, ModelClient(settings, store))
    return _from_env
