# Every command a person or CI runs. `make broker` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.json
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed
BOTS          := $(filter-out __init__,$(basename $(notdir $(wildcard bots/*.py))))

.PHONY: help broker client bot keys fingerprint test unit fuzz soak bench lint typecheck clean

help:
	@echo "make broker            start the broker on config.json's address (CONFIG=file for another)"
	@echo "make client            start the terminal client (prompts for address and name)"
	@echo "make bot BOT=echo      run an example bot ($(BOTS)); registers its key if missing"
	@echo "make keys NAME=alice   create and register a user's key pair"
	@echo "make fingerprint NAME=alice   print a registered key's fingerprint, to compare out of band"
	@echo "make test              run the tests, ruff and mypy"
	@echo "make fuzz              fuzz every parser of peer bytes (FUZZ_SECONDS=30 per target)"
	@echo "make soak              200 clients, traffic and churn against a real broker (DURATION=60 seconds)"
	@echo "make bench             measure the broker: deliveries/s, crypto bound, latency, relays, memory (ARGS=--json)"

$(RUNTIME_STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

broker: $(RUNTIME_STAMP)
	$(BIN)/python broker.py --config $(CONFIG)

client: $(RUNTIME_STAMP)
	$(BIN)/python chat_client.py --config $(CONFIG)

bot: $(RUNTIME_STAMP)
	@test -n "$(BOT)" || { echo "usage: make bot BOT=echo   (bots: $(BOTS))" >&2; exit 2; }
	@test -f "bots/$(BOT).py" || { echo "no bot named '$(BOT)'; bots: $(BOTS)" >&2; exit 2; }
	@test -f "keys/private/$(BOT).pem" || $(BIN)/python -m chat.keystore "$(BOT)"
	$(BIN)/python -m bots.$(BOT) --config $(CONFIG)

fingerprint: $(RUNTIME_STAMP)
	@test -n "$(NAME)" || { echo "usage: make fingerprint NAME=alice" >&2; exit 2; }
	@$(BIN)/python -m chat.keystore --fingerprint "$(NAME)"

keys: $(RUNTIME_STAMP)
	@test -n "$(NAME)" || { echo "usage: make keys NAME=alice" >&2; exit 2; }
	$(BIN)/python -m chat.keystore "$(NAME)"

test: $(DEV_STAMP)
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory lint typecheck

FUZZ_SECONDS ?= 30
fuzz: $(DEV_STAMP)
	@mkdir -p fuzz/crashes
	@for target in frames envelope broker client; do \
		echo "== fuzzing $$target for $(FUZZ_SECONDS)s"; \
		log=$$(mktemp); \
		$(BIN)/python -m fuzz.run $$target -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=fuzz/crashes/$$target- >$$log 2>&1 \
			|| { tail -n 40 $$log; echo "fuzz target $$target failed; the input is in fuzz/crashes/"; exit 1; }; \
		grep -E '^(Done|stat::(number_of_executed_units|new_units_added))' $$log; rm -f $$log; \
	done

DURATION ?= 60
soak: $(RUNTIME_STAMP)
	$(BIN)/python -m soak --duration $(DURATION)

bench: $(RUNTIME_STAMP)
	@$(BIN)/python -m bench $(ARGS)

unit: $(DEV_STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
