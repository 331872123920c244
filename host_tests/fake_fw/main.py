# A stand-in firmware for host_tests/test_launcher.py (MicroPython): echoes every line it
# reads on machine.UART(1); lines starting with "!" are commands that exercise the board
# stand-ins (reset, sleep, flash, RTC...) and answer with one line.
import asyncio

import machine

print("fake firmware: reset cause", machine.reset_cause())


async def command(u, w, arg):
    c = arg[0]
    if c == b"reset":
        machine.reset()
    elif c == b"sleep":
        machine.deepsleep(int(arg[1]) if len(arg) > 1 else None)
    elif c == b"lightsleep":
        machine.lightsleep(int(arg[1]) if len(arg) > 1 else None)
        w.write(b"awake\n")
    elif c == b"cause":
        w.write("cause {} wake {}\n".format(machine.reset_cause(), machine.wake_reason()))
    elif c == b"crash":
        raise ValueError("crash requested")
    elif c == b"halt":
        return True
    elif c == b"baud":
        u.init(baudrate=int(arg[1]))
        w.write(b"baud ok\n")
    elif c == b"put":
        with open("data.txt", "wb") as f:
            f.write(arg[1])
        w.write(b"put ok\n")
    elif c == b"get":
        try:
            with open("data.txt", "rb") as f:
                w.write(b"got " + f.read() + b"\n")
        except OSError:
            w.write(b"got nothing\n")
    elif c == b"rtcset":
        machine.RTC().datetime((2030, 1, 2, 2, 3, 4, 5, 0))
        w.write(b"rtc ok\n")
    elif c == b"rtc":
        w.write("rtc {}\n".format(machine.RTC().datetime()))
    elif c == b"mac":
        w.write("mac {}\n".format(machine.unique_id().hex()))
    elif c == b"any":
        await asyncio.sleep_ms(200)
        w.write("any {}\n".format(u.any()))
    elif c == b"cwd":
        import os

        w.write("cwd {}\n".format(os.getcwd()))
    return False


async def main():
    u = machine.UART(1, 115200, tx=17, rx=16, rxbuf=1024)
    r = asyncio.StreamReader(u)
    w = asyncio.StreamWriter(u, {})
    while True:
        line = await r.readline()
        if line.startswith(b"!"):
            if await command(u, w, line[1:].strip().split(b" ")):
                return
        else:
            w.write(line)
        await w.drain()


asyncio.run(main())
