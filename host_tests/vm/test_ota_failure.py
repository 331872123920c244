# MicroPython VM: an update whose failure handling itself runs out of memory still ends idle
# (firmware/otaupdate.py), so AT+OTASTART works again and the OTA group's modules can go.
# Before, the update stayed "running" for the rest of the boot. Run with MICROPYPATH=host/board
# and the repo root as argument; prints OK at the end.
import asyncio
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import ctx, otaupdate


class Serial:
    last_error = None

    def event(self, line, caused):
        pass


ctx.serial = Serial()
ctx.settings = {"ota_url": "http://127.0.0.1:1/"}


async def fails(version):
    raise OSError(5)


async def no_memory(top):
    raise MemoryError


otaupdate._install = fails
otaupdate._remove = no_memory


async def main():
    otaupdate.start("esp32_AT_v9.9.9")
    assert not otaupdate.idle()
    for _ in range(10):
        await asyncio.sleep_ms(1)
    assert otaupdate.idle()


asyncio.get_event_loop().set_exception_handler(lambda loop, context: None)
asyncio.run(main())
print("OK")
