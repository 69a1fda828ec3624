# sparse3d: the user's entry point. `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel by default. A CUDA user picks their wheel, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
SYSTEM_PACKAGES ?= libgl1 libgomp1 libusb-1.0-0 chromium
STAMP := $(VENV)/.sparse3d-setup
# nbdev_test runs notebooks in parallel: one BLAS thread each keeps 2 cores from thrashing.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg PYTHONHASHSEED=0
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: help setup demo test test-all lab readme results nbclean check-clean check-export check-results check-readme nbtest pytest clean lint

help:
	@echo "make demo      render synthetic chairs, preprocess, train on CPU, evaluate; results in demo/"
	@echo "make test      set up, check notebooks/package/README are in sync, run notebook tests and pytest"
	@echo "make test-all  the same with slow and browser tests, then builds the documentation site"
	@echo "make lab       JupyterLab on the workbook (k3d and ipywidgets ready)"
	@echo "make readme    regenerate README.md from nbs/index.ipynb"
	@echo "make results   BENCHMARKS.md and every number in the notebooks and README, from BENCHMARKS.json"
	@echo "make nbclean   give every notebook the kernel metadata JupyterLab expects, then nbdev_clean"
	@echo "make docs      build the documentation site into _docs/"
	@echo "make bench     BENCHMARKS.md: speed, memory and quality (trains the variants of BENCH_TRAIN after the demo)"
	@echo "make faults    FAULTS.md: the whole fault-injection suite (the same cases every run)"
	@echo "make faults-explore  the fuzz tests with 10x as many fresh random cases (finds new failures; writes nothing)"

setup: $(STAMP)

# Re-run only when the requirements change: the second `make setup` is a no-op.
$(STAMP): settings.ini setup.py tools/ensure_system_packages.sh
	@tools/ensure_system_packages.sh $(SYSTEM_PACKAGES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing $(TORCH_SPEC) first (a bare 'torch' requirement would pull a multi-GB CUDA build)"
	@$(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	@echo "Installing sparse3d and its development tools"
	@$(BIN)/pip install -q -e ".[dev]"
	@$(BIN)/pip check
	@touch $@

# --- the demo: every step is a CLI a user would run; re-running it resumes where it stopped ---
DEMO ?= demo
DEMO_SEQUENCES ?= 320
DEMO_FRAMES ?= 16
DEMO_CONFIG := sparse3d/configs/demo.yaml
demo: setup
	@mkdir -p $(DEMO)
	@echo "== 1/4 render $(DEMO_SEQUENCES) synthetic chairs in the CO3D layout: half studio renders, half captures"
	@$(BIN)/sparse3d_synth --out $(DEMO)/co3d --sequences $(DEMO_SEQUENCES) --frames $(DEMO_FRAMES) --image_size 96 \
	  --seed 0 --realism mixed --workers 2
	@echo "== 2/4 preprocess: voxels, poses, crops, splits, packed arrays"
	@$(BIN)/sparse3d_preprocess --input_dir $(DEMO)/co3d --output_dir $(DEMO)/processed --config $(DEMO_CONFIG) --workers 2
	@echo "== 3/4 train (resumes if a run is already there)"
	@$(BIN)/sparse3d_train --config $(DEMO_CONFIG) --input_dir $(DEMO)/processed --output_dir $(DEMO)/run \
	  $$( [ -f $(DEMO)/run/checkpoints/latest.pt ] && echo --resume )
	@$(BIN)/python -c "from sparse3d.train import run_summary; print(run_summary('$(DEMO)/run'))"
	@echo "== 4/4 evaluate on the held-out chairs: model vs visual hull vs mean shape, 1/2/4/8 views"
	@$(BIN)/sparse3d_test --model_path $(DEMO)/run/checkpoints/best.pt --test_dir $(DEMO)/processed \
	  --output_dir $(DEMO)/eval --split test --views 1,2,4,8

# --- checks: the notebooks are the source, everything else must match them ---
# The linter reads the exported package (fix findings in the notebook the module names), tests/ and tools/; line
# length is checked in the notebooks themselves (ruff reads their code cells; nbs/ is excluded only from the default
# run), since nbdev's generated `__all__` lines in sparse3d/ can exceed it.
lint: setup
	@$(BIN)/ruff check sparse3d tests tools
	@$(BIN)/ruff check --select E501 nbs

# Every notebook names its kernel (python3) and language, as JupyterLab writes them when it opens one: without
# them, opening a chapter asks which kernel to use and marks the notebook modified (tools/nb_tidy.py).
nbclean: setup
	@$(BIN)/python tools/nb_tidy.py
	@$(BIN)/nbdev_clean

check-clean: nbclean
	@if [ -n "$$(git status --porcelain -- nbs)" ]; then \
	  git status --porcelain -- nbs; \
	  echo "nbs/ is not clean after 'make nbclean' (or has uncommitted changes): run 'make nbclean' and commit."; exit 1; fi

check-export: setup
	@$(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- sparse3d)" ]; then \
	  git status --porcelain -- sparse3d; \
	  echo "sparse3d/ differs from what the notebooks export: run 'nbdev_export' and commit (never edit sparse3d/*.py by hand)."; exit 1; fi

readme: setup
	@$(BIN)/python tools/build_readme.py nbs/index.ipynb README.md

# Every published number comes from BENCHMARKS.json (written by `make bench`): BENCHMARKS.md is rendered from it, and
# the numbers and tables in the notebooks' prose sit between result markers that sparse3d_results fills
# (nbs/12_results.ipynb); the README follows from nbs/index.ipynb.
results: setup
	@$(BIN)/sparse3d_results --write
	@$(BIN)/python tools/build_readme.py nbs/index.ipynb README.md

check-results: setup
	@$(BIN)/sparse3d_results --check

check-readme: setup
	@$(BIN)/python tools/build_readme.py nbs/index.ipynb - | diff -u README.md - \
	  || { echo "README.md is out of date with nbs/index.ipynb: run 'make readme' and commit."; exit 1; }

nbtest: setup
	@$(TEST_ENV) $(BIN)/nbdev_test --n_workers 2 --timing $(NBFLAGS)

pytest: setup
	@$(TEST_ENV) $(BIN)/python -m pytest -p no:dash tests $(PYTEST_ARGS)

test: check-clean check-export check-results check-readme lint
	@$(MAKE) --no-print-directory nbtest
	@$(MAKE) --no-print-directory pytest PYTEST_ARGS='-m "not slow and not browser and not cuda"'

test-all: check-clean check-export check-results check-readme lint
	@$(MAKE) --no-print-directory nbtest NBFLAGS='--flags "slow browser"'
	@$(MAKE) --no-print-directory pytest PYTEST_ARGS='-m "not cuda"'
	@$(MAKE) --no-print-directory docs

# JupyterLab as tools/jupyter/ configures it: no build check (a dependency's source extension would ask for a
# rebuild at every start), nothing fetched from the web, and the kernel `python3` shown as the notebooks name it.
# tests/test_lab_browser.py runs this very target (with LAB_DIR and LAB_ARGS for a port, a token, a folder).
LAB_DIR ?= .
LAB_ARGS ?=
lab: setup
	@JUPYTER_PATH="$(CURDIR)/tools/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH}" \
	  $(BIN)/jupyter lab --config="$(CURDIR)/tools/jupyter/jupyter_lab_config.py" --notebook-dir="$(LAB_DIR)" --no-browser \
	  $$( [ "$$(id -u)" -eq 0 ] && echo --allow-root ) $(LAB_ARGS)

clean:
	rm -rf _docs _proc .pytest_cache

# --- the documentation site, without Quarto: nbdev's notebook processing, then Sphinx (MyST-NB, Furo).
# Saved outputs only (no notebook is run), offline (no CDN), k3d snapshots embedded; see tools/build_docs.py.
.PHONY: docs
docs: setup
	@$(TEST_ENV) $(BIN)/python tools/build_docs.py
	@echo "open _docs/index.html, or serve it: $(BIN)/python -m http.server -d _docs 8000"

# --- generated reports, committed at the top of the repo and shown as pages of the site ---
# FAULTS.md: the whole fault-injection suite (slow tests included), one row per fault tried. Its fuzz tests use
# the reproducible hypothesis profile of tests/conftest.py: the same cases on every run and machine.
# faults-explore: the fast fuzz tests with the `explore` profile, ten times as many examples drawn at random, so each
# run tries new cases; a failure prints its example and the @reproduce_failure blob: keep it as an @example.
.PHONY: faults faults-explore bench bench-quick
faults: setup
	@$(TEST_ENV) $(BIN)/python -m pytest -p no:dash tests/test_faults_*.py -q --faults-report FAULTS.md

faults-explore: setup
	@$(TEST_ENV) $(BIN)/python -m pytest -p no:dash tests/test_faults_inputs.py tests/test_binvox_interop.py -q \
	  -m "not slow" --hypothesis-profile explore

# BENCHMARKS.md and BENCHMARKS.json: speed and memory on this machine, and the quality study. Every variant trains
# with the demo's configuration (the lifted encoder) on the demo's data plus the overrides below (like the demo,
# re-running resumes): the demo's model with two more seeds; the encoder ablation (the global encoder with and without
# the silhouette refiner, the lifted one without the variance of the views); and the same-frame pose ablation (grid in
# the first view's axes: lifted; global with and without the refiner; no poses).
# They are scored on test roots never used for a design choice: more chairs of the training families
# (in-distribution), chairs of the grammar (styles never trained on), and both again under capture realism (frames
# twice the demo's size, as the capture frames are larger than studio renders).
BENCH_TRAIN ?= run_seed1 run_seed2 run_global run_global_norefine run_lifted_novar run_view run_view_global \
  run_view_norefine run_view_nopose
BENCH_SEQUENCES ?= 120
BENCH_TEST_SETS = in-distribution=$(DEMO)/bench/indist/processed:all;unseen styles=$(DEMO)/bench/styles/processed:all;capture=$(DEMO)/bench/capture/processed:all;capture, unseen styles=$(DEMO)/bench/capture_styles/processed:all
BENCH_RUNS = demo=$(DEMO)/run/checkpoints/best.pt;demo, seed 1=$(DEMO)/run_seed1/checkpoints/best.pt;demo, seed 2=$(DEMO)/run_seed2/checkpoints/best.pt;global, refiner=$(DEMO)/run_global/checkpoints/best.pt;global, no refiner=$(DEMO)/run_global_norefine/checkpoints/best.pt;lifted, no variance=$(DEMO)/run_lifted_novar/checkpoints/best.pt;view frame, lifted=$(DEMO)/run_view/checkpoints/best.pt;view frame, global, refiner=$(DEMO)/run_view_global/checkpoints/best.pt;view frame, global, no refiner=$(DEMO)/run_view_norefine/checkpoints/best.pt;view frame, no pose=$(DEMO)/run_view_nopose/checkpoints/best.pt
.PHONY: bench-train bench-data
bench-train: demo
	@for run in $(BENCH_TRAIN); do \
	  case $$run in \
	    run_seed1) extra='seed: 1';; \
	    run_seed2) extra='seed: 2';; \
	    run_global) extra='encoder: global';; \
	    run_global_norefine) extra=$$'encoder: global\nrefine: false';; \
	    run_lifted_novar) extra='lift_variance: false';; \
	    run_view) extra='voxel_frame: view';; \
	    run_view_global) extra=$$'encoder: global\nvoxel_frame: view';; \
	    run_view_norefine) extra=$$'encoder: global\nvoxel_frame: view\nrefine: false';; \
	    run_view_nopose) extra=$$'encoder: global\nvoxel_frame: view\nuse_pose: false';; \
	    *) echo "BENCH_TRAIN: unknown variant $$run"; exit 2;; \
	  esac; \
	  { cat $(DEMO_CONFIG); printf '%s\n' "$$extra"; } > $(DEMO)/$$run.yaml; \
	  echo "== train $$run ($$(echo $$extra | tr '\n' ' '))"; \
	  $(BIN)/sparse3d_train --config $(DEMO)/$$run.yaml --input_dir $(DEMO)/processed --output_dir $(DEMO)/$$run \
	    $$( [ -f $(DEMO)/$$run/checkpoints/latest.pt ] && echo --resume ); done

# The test roots: rendered, processed and packed whole (split `all`); each step resumes.
bench-data: setup
	@for spec in "indist 101 families clean 96" "styles 102 grammar clean 96" "capture 103 families capture 192" \
	  "capture_styles 104 grammar capture 192"; do \
	  set -- $$spec; d=$(DEMO)/bench/$$1; \
	  echo "== test root $$1: $(BENCH_SEQUENCES) sequences, seed $$2, $$3 shapes, $$4 realism"; \
	  $(BIN)/sparse3d_synth --out $$d/co3d --sequences $(BENCH_SEQUENCES) --frames $(DEMO_FRAMES) --image_size $$5 \
	    --seed $$2 --shapes $$3 --realism $$4 --workers 2 --quiet; \
	  $(BIN)/sparse3d_preprocess --input_dir $$d/co3d --output_dir $$d/processed --config $(DEMO_CONFIG) --workers 2 \
	    --no_split; \
	  $(BIN)/sparse3d_split --output_dir $$d/processed --pack_all; done

bench: bench-train bench-data
	@echo "== measure (speed, memory, quality): BENCHMARKS.md and BENCHMARKS.json"
	@$(BIN)/sparse3d_bench --output BENCHMARKS.md --json_path BENCHMARKS.json --runs "$(BENCH_RUNS)" \
	  --test_dir $(DEMO)/processed --test_sets "$(BENCH_TEST_SETS)"
	@$(MAKE) --no-print-directory results

# A smoke run of every benchmark in a few minutes (small shapes, no quality training); not for BENCHMARKS.md.
bench-quick: setup
	@mkdir -p $(DEMO)
	@$(BIN)/sparse3d_bench --quick --output $(DEMO)/BENCHMARKS.quick.md
