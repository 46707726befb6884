# The two commands of the README:
#   make run    set up everything (idempotent) and run the main job: the simulated pick (MuJoCo table-top +
#               the pick node graph over loopback DDS) -> out/sim_pick/{summary.json,perceived.png,after.png}
#   make test   set up everything (idempotent) and run the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
INSTRUCTION ?= pick up the cup
# The real ROS 2 launch, launch_ros and ros2 CLI (on no package index these machines reach) for test/launch,
# built from the upstream sources kept beside this repository (CI clones ../shared there); without them those
# tests are skipped. The product never needs them: on a ROS 2 site they come with the distribution.
ROS2_UPSTREAM := ../shared/ros2/upstream/install.sh

.PHONY: setup run test bench clean

# System packages: open3d needs Debian's libusb-1.0-0 at import time; MuJoCo renders offscreen with EGL
# (libegl1, libgl1); the Gazebo world is schema-checked with `ign sdf -k` (its sdf command ships in libsdformat-dev).
SYSTEM_PACKAGES := libusb-1.0-0 libegl1 libgl1 libsdformat12-12 sdformat-sdf libsdformat-dev ignition-tools
$(VENV)/.system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
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
	@if [ -f $(ROS2_UPSTREAM) ]; then bash $(ROS2_UPSTREAM) $(VENV); fi

run: setup
	@$(VENV)/bin/dino-vla sim-pick --instruction "$(INSTRUCTION)" --out out/sim_pick
	@echo "record: out/sim_pick/perceived.png, out/sim_pick/after.png, out/sim_pick/summary.json"

# A hung (or crashed) test leaves out/hung-test.txt (test/conftest.py): its name and, after a hang, its main
# thread's innermost frames are printed last, where a CI log's tail shows them.
test: setup
	@rm -f out/hung-test.txt
	DINO_VLA_HANG_REPORT=$(CURDIR)/out/hung-test.txt $(VENV)/bin/pytest || { rc=$$?; test ! -f out/hung-test.txt || \
	  awk 'NR == 1 { name = $$0; next } /^(Current thread|Thread) 0x/ { n = 0 } { block[++n] = $$0 } \
	  END { for (i = 1; i <= n && i <= 21; i++) print block[i]; print "pytest ended during " name }' \
	  out/hung-test.txt; exit $$rc; }

bench: setup
	$(VENV)/bin/dino-vla bench
	$(VENV)/bin/dino-vla bench-pick
	$(VENV)/bin/dino-vla eval

clean:
	rm -rf build build.log out
