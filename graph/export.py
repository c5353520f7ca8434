"""Write a run's finished samples in the authors' output format."""

from __future__ import annotations

import json
from pathlib import Path

from mmevol.graph.store import Store


def export_json(results_db: Path, output: Path) -> int:
    """Stream finished samples, in seed order, into a JSON list file; return how many."""
    store = Store(results_db)
    try:
        rounds = (store.get_meta("settings") or {}).get("rounds", 3)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".part")
        count = 0
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("[")
            for sample in store.export_rows(rounds):
                fh.write(",\n" if count else "\n")
                fh.write(json.dumps(sample, ensure_ascii=False))
                count += 1
            fh.write("\n]\n")
        # Replace the old file only once the new one is whole.
        tmp.replace(output)
    finally:
        store.close()
    return count
