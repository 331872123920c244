"""Relay bytes no faster than a UART at the configured baud rate (the launcher's --pace)."""

from __future__ import annotations

import asyncio
from typing import Any


class Pacer:
    """Delivers bytes no faster than a UART at the configured baud rate would."""

    def __init__(self, send, settings: dict[str, Any]) -> None:
        self._send = send  # async callable taking bytes
        self._settings = settings  # the last "uart" op (shared, live)
        self._buf = bytearray()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def byte_rate(self) -> float:
        s = self._settings
        bits = 1 + int(s.get("bits") or 8) + (1 if s.get("parity") is not None else 0)
        bits += float(s.get("stop") or 1)
        return max(1.0, float(s.get("baudrate") or 115200) / bits)

    def put(self, data: bytes) -> None:
        self._buf += data
        self._ready.set()
        if len(self._buf) > 4096:
            self._space.clear()

    async def put_wait(self, data: bytes) -> None:
        self.put(data)
        await self._space.wait()

    def clear(self) -> None:
        self._buf.clear()
        self._space.set()

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._buf:
                rate = self.byte_rate()
                n = max(1, int(rate * 0.002))  # one chunk per ~2 ms
                chunk = bytes(self._buf[:n])
                del self._buf[:n]
                if len(self._buf) <= 4096:
                    self._space.set()
                now = loop.time()
                due = max(due, now - 0.01)  # an idle line earns no credit
                await self._send(chunk)
                due += len(chunk) / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
