"""What the job service does, as functions: the API routes and the Celery tasks are thin callers.

``tenants`` and ``jobs`` import no ML code and serve the API; ``processing`` runs the detection
pipeline and is imported by the workers only.

What talks to the broker is passed in, never reached for: each process builds its ``Enqueuer`` once
(the API's lifespan, a worker's runtime, the sweeper's loop) and hands its methods to the functions
below as an :data:`Enqueue` or an :data:`EnqueueWebhook`.

Sessions and rows, one rule for every module here:

- Sessions come from :func:`fakescope.db.engine.new_session` only, made with ``expire_on_commit=False``:
  a commit leaves the objects in hand loaded, so nothing is expunged or re-read to dodge expiry.
- One row at a time through ORM objects (``session.add``, attribute changes).
- Many rows in one statement only through :mod:`fakescope.service.rows` (``insert_items``,
  ``write_rows``); state changes that must not race another process are conditional ``update()``
  statements (``WHERE status = 'queued'``), never a read, a change in Python and a flush.
- What another process (or a Core statement) may have changed since it was loaded is read again
  explicitly: ``session.refresh(obj)`` or a query of columns. A query of whole objects hands back the
  ones the session already holds, as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

__all__ = ["Enqueue", "EnqueueWebhook"]

# Sends a job's items to a worker queue (chunked by the sender); returns how many tasks it sent.
# The API and the sweeper pass ``Enqueuer.classify``/``.explain``; tests pass a recorder.
Enqueue = Callable[[uuid.UUID, Sequence[uuid.UUID]], int]

# Hands a job's pending webhook to the webhooks queue (fakescope.service.outbox). The API, the workers
# and the sweeper pass ``Enqueuer.webhook``; None leaves it in the outbox for the sweeper to send.
EnqueueWebhook = Callable[[uuid.UUID], object]
