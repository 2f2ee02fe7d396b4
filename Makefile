# Two commands matter: `make demo` and `make test`. Both build .venv from scratch
# on a machine that has only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# apt-get needs root: sudo only when not root already (a CI container usually is).
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: test demo lint typecheck pytest promtool redis-server bench bench-overhead bench-overload bench-instructions bench-chaos bench-tail bench-tasks bench-scrape clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tailguard needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(STAMP)

# The bundled game-day, twice (protections on, then shadow): about 50 s.
demo: $(STAMP)
	$(BIN)/tailguard demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The exposition test runs `promtool check metrics`, and the anyio test downloads the oldest
# anyio allowed (pip download); under make either fails rather than skips.
pytest: $(STAMP) promtool redis-server
	TAILGUARD_REQUIRE_PROMTOOL=1 TAILGUARD_REQUIRE_REDIS=1 TAILGUARD_REQUIRE_OLDEST_ANYIO=1 $(BIN)/pytest --doctest-modules src tests --cov --cov-report=term-missing:skip-covered

# The Redis chaos-store tests start their own redis-server (a free port on 127.0.0.1, a temp dir).
redis-server:
	@command -v redis-server >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server)

# Debian's `prometheus` package ships promtool.
promtool:
	@command -v promtool >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

bench: bench-overhead bench-overload bench-instructions bench-chaos bench-tail bench-tasks bench-scrape

bench-overhead: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/overhead.py

bench-overload: $(STAMP)
	$(BIN)/python benchmarks/overload.py

bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python benchmarks/instructions.py

bench-chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py

bench-tail: $(STAMP)
	$(BIN)/python benchmarks/tail.py

bench-scrape: $(STAMP)
	$(BIN)/python benchmarks/scrape.py

bench-tasks: $(STAMP)
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python benchmarks/task_attribution.py --instructions

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .pytest_cache .ruff_cache
