# Two entry points (see README.md): `make demo` runs the main job on the demo
# model, `make test` runs the test suite. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch: a bare `torch` requirement would pull several GB of
# CUDA packages. On machines where pip's index has no CPU wheel of this version,
# run e.g. `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# Ultralytics, for the YOLOv8/YOLO11 pruning tests only (edgekit does not need
# it): installed without its dependencies, plus the two its model definitions
# import (cv2, yaml); the constraint keeps pip from ever replacing torch.
# torchvision, which it also imports, has no build for this torch here: the
# tests put a stand-in on the path (tests/ultralytics_shim). ULTRALYTICS_SPEC=
# (empty) skips it.
ULTRALYTICS_SPEC ?= ultralytics==8.4.190 opencv-python-headless==5.1.0.95 pyyaml==6.0.4

.PHONY: venv demo test clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[host,device,dev]'
	$(if $(ULTRALYTICS_SPEC),echo '$(TORCH_SPEC)' > $(VENV)/torch-constraint.txt && $(BIN)/python -m pip install -q --no-deps -c $(VENV)/torch-constraint.txt $(ULTRALYTICS_SPEC))
	touch $@

venv: $(VENV)/.installed

# The main job on the built-in demo: build a bundle (unpruned and pruned, fp32
# and int8), measure it with the agent on this machine, compare the results.
DEMO_PROFILE ?= cpu
DEMO_PRUNE ?= 0,0.3
DEMO_STRATEGY ?= sensitivity
DEMO_RECOVER_SECONDS ?= 300
DEMO_BUNDLE ?= bundles/demo-$(DEMO_PROFILE)

demo: venv
	$(BIN)/edgekit build --profile $(DEMO_PROFILE) --prune $(DEMO_PRUNE) --prune-strategy $(DEMO_STRATEGY) --recover-seconds $(DEMO_RECOVER_SECONDS) --out $(DEMO_BUNDLE)
	$(BIN)/edgekit deploy local --bundle $(DEMO_BUNDLE)
	$(BIN)/edgekit report

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
