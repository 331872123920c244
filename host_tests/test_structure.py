"""Rules of the firmware's structure that no behaviour test sees (CPython, source only)."""

import re

from host_tests.test_port_api import sources

STREAMS = re.compile(r"\b(start_server|open_connection|StreamReader|StreamWriter)\b")


# Socket I/O is firmware/aio.py's alone. asyncio's streams would be a second mechanism, and
# importing asyncio.stream keeps about 2 KB for the rest of the boot; its server's tasks are plain
# asyncio tasks, which can keep a stopped feature's module alive (aio.task says why).
def test_socket_io_goes_through_aio():
    found = [f"{p.name}:{n}" for p in sources() for n, line in
             enumerate(p.read_text().splitlines(), 1) if STREAMS.search(line)]  # fmt: skip
    assert not found, found
