# fm21: `make demo` and `make test` work as the only command on a fresh machine.
# Every target takes dotted overrides: make train SET="train.steps=50 train.lr=3e-4"
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
CONFIG ?= flows.yaml
RECIPE ?=
SET    ?=
FORCE  ?=
FM21    = $(VENV)/bin/fm21 --config $(CONFIG) $(if $(RECIPE),--recipe $(RECIPE)) $(foreach s,$(SET),--set $(s))
STAGES := ingest pseudolabel tokenizers tokens train evaluate

.PHONY: install browser demo test $(STAGES) stats config build-dataset ui bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q pip==26.3
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install            ## the whole pipeline on the embedded default (Prefect end_to_end flow)
	$(FM21) run end_to_end
	$(FM21) stats

TEST_WORKERS ?= 2
test: install browser    ## the test suite (CPU, no network), on TEST_WORKERS pytest-xdist workers
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# Debian's chromium for the Prefect UI tests (Playwright's own browser download is not used);
# where it cannot be installed those two tests skip and say why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	  echo "note: chromium not installed; the browser tests will skip"

$(STAGES): install       ## one stage: make pseudolabel [FORCE=1] [RETRY_FAILED=1] [SET="k=v ..."]
	$(FM21) stage $@ $(if $(FORCE),--force) $(if $(RETRY_FAILED),--retry-failed)

build-dataset: install   ## ingest -> pseudolabel -> tokenizers -> tokens as a Prefect flow
	$(FM21) run build_dataset

ui: install              ## Prefect server + UI on http://127.0.0.1:4200 with the fm21 deployments (Ctrl-C stops)
	$(FM21) ui

stats: install           ## token-store statistics
	$(FM21) stats

config: install          ## the resolved configuration
	$(FM21) config show

bench: install           ## benchmarks (tables + JSON)
	$(VENV)/bin/python benchmarks/bench_render.py

clean:                   ## remove the demo workdir (not the venv)
	rm -rf work/demo
