FLAG_READ = FLAG_WRITE = FLAG_NOTIFY = FLAG_WRITE_NO_RESPONSE = 0


class UUID:
    def __init__(self, value):
        self.value = value


class BLE:
    pass
