# Board start-up, before main.py. (OTA staging will be applied here.)
import gc

gc.collect()
