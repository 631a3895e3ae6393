# Encore: two commands on a fresh machine.
#   make demo   set up .venv and run the main job end to end on a generated sample world:
#               sample data into the inbox -> nightly (ingest, features, annotate, embed, feast
#               apply + materialize) -> train E4SRec (multimodal, DeepSpeed, @challenger) -> promote
#               (@champion) -> nightly resumes (score every user with Ray, run report)
#   make test   set up .venv and run the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORLD ?= .encore/sample-world
# Sized for `make demo` in ~12 minutes from a fresh clone on 2 cores, the venv included: 30 days
# of 100 users over 1,000 tracks (~41k listens). E4SRec on MiniLM reads ~19 windows/s here; batches
# of 32 give it 27 optimizer steps an epoch (at 128, four epochs on a 21-day world left it below
# the popularity ranking; docs/models.md). The
# SASRec it takes its ID table from trains to early stopping first (docs/models.md, "The demo's model").
DEMO_ARGS ?= --users 100 --tracks 1000 --days 30 --clips 200
DEMO_TRAIN_ARGS ?= --epochs 3 --id-epochs 30 --batch-size 32
# PYTHONWARNINGS: setuptools warns about editable installs, ten lines nobody acts on.
PIP := PYTHONWARNINGS=ignore $(BIN)/pip --disable-pip-version-check -q
# pip on this machine can print one harmless line per package about an absent local index.
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

# The ablation table's world (README, "The paper's ablation"): many short histories over a long-tailed
# catalog, so the leave-one-out test has ~420 users for the cost of ~19k listens.
TABLE_HOME ?= $(CURDIR)/.encore/table
TABLE_WORLD_ARGS ?= --users 500 --tracks 12000 --days 3 --clips 1000 --seed 11
TABLE_ARGS ?= --epochs 8 --id-epochs 30 --batch-size 32

.PHONY: demo test venv bench lint clean table redis-server chromium

venv: $(STAMP)

# torch first, pinned: any other torch request pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(PIP) install --upgrade pip $(QUIET_PIP)
	set -o pipefail; $(PIP) install torch==2.13.0 $(QUIET_PIP)
	set -o pipefail; $(PIP) install -c constraints.txt -e '.[dev]' $(QUIET_PIP)
	touch $(STAMP)

# The sample world is the inbox: its listens, profiles and catalog are tonight's new raw files.
# The first nightly stops before scoring (there is no champion yet); the second resumes there.
# A rerun of `make demo` whose new model does not beat the champion keeps the champion.
demo: $(STAMP)
	$(BIN)/encore sample-data --out $(DEMO_WORLD) $(DEMO_ARGS)
	$(BIN)/encore nightly --inbox $(DEMO_WORLD) --until materialize
	$(BIN)/encore summary
	$(BIN)/encore train --model e4srec $(DEMO_TRAIN_ARGS)
	$(BIN)/encore promote || echo "promotion declined: the current champion keeps scoring"
	$(BIN)/encore nightly --inbox $(DEMO_WORLD)

# ~1.9 hours on two cores: 27 E4SRec runs of ~3.5 minutes, then bench/tail.py's 4 runs (one seed).
# The table resumes after a kill; bench/tail.py reruns its four.
table: $(STAMP)
	export ENCORE_HOME=$(TABLE_HOME); W=$(TABLE_HOME)/world; set -e; \
	$(BIN)/encore sample-data --out $$W $(TABLE_WORLD_ARGS); \
	$(BIN)/encore ingest --listens $$W/userid-timestamp-artid-artname-traid-traname.tsv \
	    --profiles $$W/userid-profile.tsv --catalog $$W/catalog.jsonl; \
	$(BIN)/encore features; $(BIN)/encore annotate; $(BIN)/encore embed; \
	$(BIN)/encore feast apply; $(BIN)/encore materialize; \
	$(BIN)/python bench/headroom.py; \
	$(BIN)/encore bench table $(TABLE_ARGS); \
	$(BIN)/python bench/tail.py $(TABLE_ARGS)

# The cluster tests (tests/cluster) run Redis as Feast's online store: Debian's redis-server.
# The report test opens the nightly report in headless Chromium: Debian's chromium.
test: $(STAMP) redis-server chromium
	$(BIN)/pytest

APT_GET = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q $(1) >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(1) >/dev/null; }

redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server for the cluster tests"; \
	  $(call APT_GET,redis-server); }

chromium:
	@command -v chromium >/dev/null || { echo "installing chromium for the report test"; \
	  $(call APT_GET,chromium); }

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/feature_store.py --home .encore/bench-features/u1000-t50000-d365-s0/home
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/score.py

clean:
	rm -rf .encore .pytest_cache
