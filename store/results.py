"""The results database of a run (sqlite-utils): `Store`, every table's class over one connection.

``Store`` is composed of one class per concern, each in its own module beside the SQL of
the table(s) it owns: ``Samples`` (samples.py), ``Rounds`` (rounds.py), ``Calls``
(calls.py), ``Batches`` (batches.py), ``Gates`` (gates.py), ``Queries`` (queries.py,
read-only summaries) and ``Merging`` (merging.py), all extending ``StoreBase``
(database.py: opening, the shared connection ``self.db``, generic ``rows``/``count``,
meta). They are mixins over that one connection rather than separate objects behind
delegating methods: each call site keeps
``store.log_call(...)``, ``store.summary()`` etc. with no forwarding code to keep in step,
and a transaction sees one connection whichever concern's methods it uses. The concern
classes share no state but ``self.db`` and never call one another (only ``StoreBase``), so
each can also be opened on its own (``Queries(path)`` reads a run).

The names other modules import from here (``Store``, ``StoreProblem``, ``open_db``,
``reason_kind``, ``migrations``, ``CheckpointRows``) stay importable from this module.
"""

from __future__ import annotations

from mmevol.store.batches import Batches
from mmevol.store.calls import Calls
from mmevol.store.checkpointrows import CheckpointRows
from mmevol.store.database import StoreBase, StoreProblem, open_db
from mmevol.store.gates import Gates
from mmevol.store.merging import Merging
from mmevol.store.migrations import migrations
from mmevol.store.queries import Queries
from mmevol.store.rounds import Rounds, reason_kind
from mmevol.store.samples import Samples

__all__ = [
    "CheckpointRows",
    "Store",
    "StoreProblem",
    "migrations",
    "open_db",
    "reason_kind",
]


class Store(Samples, Rounds, Calls, Batches, Gates, Queries, Merging, StoreBase):
    """Typed reads and writes of the results database; the only code that writes its SQL.

    Use it as a context manager, which closes the connection::

        with Store(settings.results_db) as store:
            summary = store.summary()
    """
