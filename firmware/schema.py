# Every setting the module stores (data/settings.json): its factory default, which is also its
# check. A stored value is taken only if it has the default's type (and, for a list, its
# length); anything else is ignored with a log line and the default used. AT+FACTORY restores
# exactly these. The values of every group are loaded and kept, whether its commands are
# loaded or not.
# fmt: off
DEFAULTS = {
    # system (commands/system.py)
    "flashlock": False,
    "wevent": True,
    "cipevent": True,
    "verbose_errors": False,  # AT+ERRVERBOSE (extension)
    "hide_secrets": False,  # AT+SECRETS=HIDE (extension)
    # UART (commands/uart.py)
    "echo": True,  # AT+UARTE
    "uart": [115200, 8, 1, "NONE", "NONE"],  # baud, data bits, stop bits, parity, flow
    "uartfomat": [1024, 100],  # transparent-mode frame length (bytes) and idle time (ms)
    # Wi-Fi (wifi.py)
    "sta": ["", ""],  # stored SSID and key ("" = none)
    "sta_on": False,  # join the stored AP at start (cleared by AT+WJAPQ)
    "dhcp": True,
    "sta_ip": ["0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"],  # static address, mask, gateway, DNS (AT+WJAPIP)
    "ap": ["", ""],  # soft AP SSID and key
    "ap_on": False,  # start the soft AP at start (cleared by AT+WSAPQ)
    "ap_ip": ["192.168.4.1", "255.255.255.0", "192.168.4.1"],
    "scanopt": 0,
    # TCP/IP links (links.py)
    "recvcfg": 1,  # 1 push (+CIPEVENT:SOCKET), 0 pull (AT+CIPRECV)
    "autoconn": [1, 1, 1, 1, 1],
    "links": [[], [], [], [], []],  # per id: [type, host, remote port, local port] while started
    "sslopt": [[0, 0], [0, 0], [0, 0], [0, 0], [0, 0]],  # per id: verify root, client cert
    # MQTT (mqtt.py)
    "mqtt_auth": ["", ""],  # user name, password ("" = none)
    "mqtt_sock": ["", 1883],  # broker host, port
    "mqtt_caverify": [False, False],  # verify the server (root CA), send a client certificate
    "mqtt_ssl": False,
    "mqtt_cid": "",  # "" = "EMW_" + the station MAC
    "mqtt_keepalive": 60,  # s; 0 = none
    "mqtt_reconn": True,
    "mqtt_autostart": False,
    "mqttevent": True,  # factory default drivers rely on (wire notes); gated in events.py
    "mqtt_subs": [[], [], [], [], [], []],  # per id: [] or [topic filter, qos]
    "mqtt_pub": ["", 0],  # topic and QoS of AT+MQTTSEND
    # provisioning (provision.py)
    "prov_key": "",  # AT+SMARTKEY: "" = open set-up AP, else its WPA2 key (8..63)
    "prov_http": ["AP", 80],  # AT+SMARTHTTP: address ("AP" = the soft AP's) and port
    "airkiss": ["", ""],  # AT+SMARTCFG: AirKiss device_id, original_id (stored only)
    # SNTP (sntp.py)
    "sntp_zone": 0,  # minutes east of UTC (factory default: UTC)
    "sntp_servers": ["pool.ntp.org", "time.google.com"],  # "" = none; "host:port" allowed
    # Bluetooth (bt.py)
    "bt_name": "",  # AT+BTNAME ("": the default name, EMW3239_<last 3 bytes of the MAC>)
    "bt_passkey": "123456",  # AT+BTPASSKEY
    "bt_on": False,  # AT+BTDISCOVERY=ON: advertise, also after a restart
    "btevent": True,  # AT+BTEVENT=EN
    # OTA (ota.py)
    "ota_url": "",  # AT+OTAURL: the update server (extension)
    "ota_progress": False,  # AT+OTAPROGRESS: +OTAEVENT:PROGRESS events (extension)
}
# fmt: on


# Whether a stored value passes the check of the key's default.
def valid(key, value):
    default = DEFAULTS[key]
    return type(value) is type(default) and (type(value) is not list or len(value) == len(default))
