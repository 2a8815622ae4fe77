"""The embedded broker's exchange tables: a table another process is still writing is never read."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection
from kombu.transport import filesystem

from fakescope import fsbroker


def _channel(folder: Path) -> fsbroker.Channel:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder / "ctl")}
    conn = Connection("filesystem://", transport=fsbroker.Transport, transport_options=options)
    channel = conn.default_channel
    assert isinstance(channel, fsbroker.Channel)
    return channel


def test_a_table_being_made_is_read_only_once_written(tmp_path: Path) -> None:
    reader, writer = _channel(tmp_path), _channel(tmp_path)
    table = writer.control_folder / "classify.exchange"
    # Another worker binding the first queue: kombu has created the table, not yet written it.
    with writer.tables_locked():
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_bytes(b"")
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(reader.get_table("classify")))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not got  # waits for the lock instead of reading the empty file
        table.unlink()
        filesystem.Channel._queue_bind(writer, "classify", "classify", "", "classify")
    t.join(5)
    assert [q.queue for q in got[0]] == ["classify"]  # type: ignore[attr-defined]


def test_filesystem_urls_use_it_once_installed(tmp_path: Path) -> None:
    fsbroker.install()
    assert isinstance(_channel(tmp_path), fsbroker.Channel)
    c = Connection("filesystem://", transport_options={"control_folder": str(tmp_path)}).default_channel
    assert isinstance(c, fsbroker.Channel)
    c.connection.client.release()
