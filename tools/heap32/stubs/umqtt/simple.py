class MQTTException(Exception):
    pass


class MQTTClient:
    pass
