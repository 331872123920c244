# The AT firmware version reported by AT+FWVER (1..32 characters, no comma: drivers read it
# into a 32-byte buffer or cut it at a comma).
VERSION = "esp32_AT_v2.0.0"
