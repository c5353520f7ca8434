"""The run context every node receives: settings, the results store and the model client.

It is LangGraph's runtime context, passed to each invocation and never checkpointed, so
the API key inside the settings cannot reach the checkpoint database.
"""

from __future__ import annotations

from dataclasses import dataclass

from graph.config import Settings
from graph.store import Store
from nodes.llm import ModelClient


@dataclass
class RunContext:
    """What nodes need besides their state."""

    settings: Settings
    store: Store
    client: ModelClient
