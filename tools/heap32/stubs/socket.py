AF_INET = SOCK_STREAM = SOCK_DGRAM = SOL_SOCKET = SO_REUSEADDR = IPPROTO_TCP = TCP_NODELAY = 0


class socket:
    pass


def getaddrinfo(*args):
    return []
