"""An ``Enqueue`` (``fakescope.service``) for tests that run the chunks themselves instead of a worker."""

from __future__ import annotations

import uuid
from collections.abc import Sequence


class Chunks:
    """Collects what create_job or the sweeper would send to the broker, so the test can run the chunks
    itself or check what was sent; each call counts as one message sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[uuid.UUID, list[uuid.UUID]]] = []

    def __call__(self, job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        self.sent.append((job_id, list(item_ids)))
        return 1

    @property
    def item_ids(self) -> list[uuid.UUID]:
        """The items of every chunk sent, in the order they were sent."""
        return [i for _, ids in self.sent for i in ids]
