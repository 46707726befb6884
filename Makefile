# The two commands of the README:
#   make run    set up everything (idempotent) and run the main job: the perception pipeline on a
#               real photo (scikit-image's coffee cup) -> out/annotated.png + out/summary.json
#   make test   set up everything (idempotent) and run the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
INSTRUCTION ?= pick up the cup

.PHONY: setup run test bench clean

# System libraries: open3d needs Debian's libusb-1.0-0 at import time.
$(VENV)/.system-deps:
	@if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
	  echo "installing Debian's libusb-1.0-0 (open3d needs it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libusb-1.0-0; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.python-deps: requirements.txt constraints.txt $(VENV)/.system-deps
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
	@touch $@

# Interfaces (msg/) generated with rosidl into the venv; the Python sources are installed as symlinks
# (like colcon --symlink-install), so edits are live. Re-installing is cheap and picks up new modules.
setup: $(VENV)/.python-deps
	@test -f build/build.ninja || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH=$(CURDIR)/$(VENV) -DCMAKE_INSTALL_PREFIX=$(CURDIR)/$(VENV) \
	  -DPython3_EXECUTABLE=$(CURDIR)/$(PY) -DDINO_VLA_SYMLINK_PYTHON=ON > build.log 2>&1 \
	  || { cat build.log; exit 1; }
	@cmake --build build -j2 >> build.log 2>&1 && cmake --install build >> build.log 2>&1 \
	  || { tail -50 build.log; exit 1; }

run: setup
	@mkdir -p out
	@$(PY) -c "from skimage import data; from PIL import Image; Image.fromarray(data.coffee()).save('out/coffee.png')"
	@$(VENV)/bin/dino-vla detect out/coffee.png --instruction "$(INSTRUCTION)" --out out/annotated.png > out/summary.json
	@cat out/summary.json
	@echo "annotated image: out/annotated.png, summary: out/summary.json"

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/dino-vla bench

clean:
	rm -rf build build.log out
