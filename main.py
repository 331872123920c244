# Board entry point: run the AT firmware.
from firmware import app

app.run()
