"""What the job service does, as functions: the API routes and the Celery tasks are thin callers.

``tenants`` and ``jobs`` import no ML code and serve the API; ``processing`` runs the detection
pipeline and is imported by the workers only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

__all__ = ["Enqueue"]

# Sends a job's items to a worker queue (chunked by the sender); returns how many tasks it sent.
# The API and the sweeper pass ``Enqueuer.classify``/``.explain``; tests pass a recorder.
Enqueue = Callable[[uuid.UUID, Sequence[uuid.UUID]], int]
