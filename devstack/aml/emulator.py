"""The emulator's process-wide state, as the request handlers see it.

Handlers are plain functions `(Emulator, Call) -> Reply`; they depend on this module (and on the
lower ones: config, store, storage, web), never on `app.py`, which builds the Emulator, collects
every module's routes and serves them. That keeps the import graph of `devstack.aml` acyclic
(checked by `devstack/tests/unit/test_emulator_imports.py`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.aml.config import AmlConfig
from devstack.aml.storage import DatastoreMap
from devstack.aml.store import Store, Tx

WORKSPACE_TOPIC = "workspace"


@dataclass(eq=False)  # identity semantics: per-emulator registries key weakly on the instance
class Emulator:
    """Process-wide state shared by the handlers."""

    config: AmlConfig
    store: Store
    datastores: DatastoreMap
    token_key: bytes  # signs managed-identity and endpoint tokens (HS256)
    started_at: str  # ISO time this process opened the workspace

    def record_event(self, tx: Tx, event_type: str, subject: str, data: dict[str, Any]) -> None:
        """Queue an Azure ML system event (Event Grid schema) in the same transaction as the change."""
        tx.add_event(WORKSPACE_TOPIC, {
            "id": str(uuid.uuid4()),
            "topic": self.config.coords.arm_id,
            "subject": subject,
            "eventType": f"Microsoft.MachineLearningServices.{event_type}",
            "eventTime": datetime.now(UTC).isoformat(),
            "data": data,
            "dataVersion": "2",
            "metadataVersion": "1",
        })
