# esp32_errno.py: the ESP32 port's errno module on the PC; host/start.py installs it as `errno`
# (the unix port's built-in errno cannot be shadowed by a file). py/moderrno.c (v1.24) with the
# default MICROPY_PY_ERRNO_LIST, and the values of ESP-IDF's newlib (sys/errno.h), as the ESP32
# port builds with MICROPY_USE_INTERNAL_ERRNO=0. Names that list lacks (EISCONN, ENOSPC, EPROTO...)
# raise AttributeError here as on the chip. host/board/socket.py turns Linux numbers into these.
from micropython import const

EPERM = const(1)
ENOENT = const(2)
EIO = const(5)
EBADF = const(9)
EAGAIN = const(11)
ENOMEM = const(12)
EACCES = const(13)
EEXIST = const(17)
ENODEV = const(19)
EISDIR = const(21)
EINVAL = const(22)
EOPNOTSUPP = const(95)
ECONNRESET = const(104)
ENOBUFS = const(105)
ECONNREFUSED = const(111)
EADDRINUSE = const(112)
ECONNABORTED = const(113)
ETIMEDOUT = const(116)
EHOSTUNREACH = const(118)
EINPROGRESS = const(119)
EALREADY = const(120)
ENOTCONN = const(128)

errorcode = {
    EPERM: "EPERM",
    ENOENT: "ENOENT",
    EIO: "EIO",
    EBADF: "EBADF",
    EAGAIN: "EAGAIN",
    ENOMEM: "ENOMEM",
    EACCES: "EACCES",
    EEXIST: "EEXIST",
    ENODEV: "ENODEV",
    EISDIR: "EISDIR",
    EINVAL: "EINVAL",
    EOPNOTSUPP: "EOPNOTSUPP",
    ECONNRESET: "ECONNRESET",
    ENOBUFS: "ENOBUFS",
    ECONNREFUSED: "ECONNREFUSED",
    EADDRINUSE: "EADDRINUSE",
    ECONNABORTED: "ECONNABORTED",
    ETIMEDOUT: "ETIMEDOUT",
    EHOSTUNREACH: "EHOSTUNREACH",
    EINPROGRESS: "EINPROGRESS",
    EALREADY: "EALREADY",
    ENOTCONN: "ENOTCONN",
}
