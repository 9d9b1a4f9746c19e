# The two commands of the README: `make book` and `make test`. Each creates or reuses ./.venv.
# `make test-outputs` regenerates the notebook outputs that the tests compare (nbval) and that the book
# test starts from, reusing each whose code is unchanged: run it after changing mexit, or make test
# executes every notebook twice (about 3.5 minutes more; the tests pass either way).
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
# One process a usable core (CPU affinity within a container's quota), no more than memory holds at
# 2 GiB each: mexit/machine.py, standard library only, so that it answers before the venv exists.
JOBS ?= $(shell $(PYTHON) -I mexit/machine.py 2>/dev/null || echo 2)
# Test workers (pytest-xdist), as many as JOBS: every test runs one thread; a file's tests stay on one worker.
TEST_JOBS ?= $(JOBS)
BIN := $(VENV)/bin
STAMP := $(VENV)/.mexit-installed

# The tests whose results could hang on the last bits of a float (logits computed again, thresholds,
# ties, the notebooks' checked outputs), run again with one thread and AVX2 kernels, which round
# otherwise than this machine's defaults: a test that only passes on its author's CPU fails here.
VARIED_TESTS ?= tests/test_robustness.py tests/test_exit_parity.py tests/test_evaluate.py tests/test_evaluate_rules.py \
	tests/test_calibration.py tests/test_rules.py tests/test_analysis_runs.py tests/test_timing.py tests/test_generic.py \
	tests/notebooks

.PHONY: book test test-varied test-outputs install browser clean-book

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --retries 10 --resume-retries 20 -c constraints.txt -e .
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mexit book --profile $(PROFILE) --jobs $(JOBS)

# The browser check opens the built book in Chromium: installed from Debian's packages where missing and
# where root or password-less sudo allows. Where it cannot be, the check is skipped with its reason (CI
# sets MEXIT_REQUIRE_BROWSER=1, which fails it instead); MEXIT_CHROMIUM names another Chromium or Chrome.
browser:
	@[ -n "$$MEXIT_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: Chromium could not be installed (it needs root or password-less sudo, and Debian's packages): the browser check will be skipped (with MEXIT_REQUIRE_BROWSER=1, fail)" >&2

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

test-varied: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile $(VARIED_TESTS)

test-outputs: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MEXIT_RUNS=$$(mktemp -d) $(BIN)/python -c "from mexit.book import write_test_outputs; write_test_outputs()"

clean-book:
	rm -rf _build book/generated
