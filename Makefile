# Every command a person or CI runs. `make broker` and `make test` work on a fresh clone.

# ---------------------------------------------------------------- values from whoever runs make
# NAME, BOT, CONFIG, TO, ARGS, DURATION, KILL_BROKER_EVERY, FUZZ_SECONDS and PYTHON come from the command line or the environment,
# perhaps from a script passing on a name someone typed. Three rules keep them data, never code:
#  1. make never expands them. A variable set on the command line is expanded when make exports it to a
#     recipe, so `NAME='$(shell ...)'` would run; the first line below turns every command-line variable into
#     a literal copy of its text (still exported), and the nine are read with $(value) whatever their origin.
#  2. each is checked against an allow-list before the goal that uses it runs: a one-line error, status 2.
#  3. recipes read them only from the environment, quoted ("$$ZCHAT_NAME" and so on): the shell never
#     parses them as code, and a value starting with `-` is never taken for an option.
$(foreach _zchat_var,$(.VARIABLES),$(if $(filter command line,$(origin $(_zchat_var))),$\
    $(eval override $(_zchat_var) := $$(value $(_zchat_var)))$(eval export $(_zchat_var))))

PYTHON       ?= python3
CONFIG       ?= config.json
FUZZ_SECONDS ?= 30
DURATION     ?= 60
KILL_BROKER_EVERY ?= 0
override NAME         := $(value NAME)
override BOT          := $(value BOT)
override CONFIG       := $(value CONFIG)
override ARGS         := $(value ARGS)
override DURATION     := $(value DURATION)
override KILL_BROKER_EVERY := $(value KILL_BROKER_EVERY)
override TO           := $(value TO)
override FUZZ_SECONDS := $(value FUZZ_SECONDS)
override PYTHON       := $(value PYTHON)

# Not settable from outside: these reach recipes as shell text.
override SHELL         := /bin/sh
override .SHELLFLAGS   := -c
override VENV          := .venv
override BIN           := $(VENV)/bin
override RUNTIME_STAMP := $(VENV)/.runtime-installed
override DEV_STAMP     := $(VENV)/.dev-installed
override BOTS          := $(filter-out __init__,$(basename $(notdir $(wildcard bots/*.py))))

_digits     := 0 1 2 3 4 5 6 7 8 9
_name_chars := a b c d e f g h i j k l m n o p q r s t u v w x y z \
               A B C D E F G H I J K L M N O P Q R S T U V W X Y Z $(_digits) _ -
_path_chars := $(_name_chars) . /
_args_chars := $(_path_chars) =
_empty      :=
_space      := $(_empty) $(_empty)
# $(call _strip_chars,TEXT,CHARS): TEXT without any of CHARS (a list of single characters).
_strip_chars = $(if $2,$(call _strip_chars,$(subst $(firstword $2),,$1),$(wordlist 2,$(words $2),$2)),$1)
# $(call _only,TEXT,CHARS): "yes" when TEXT holds nothing but CHARS (tabs, newlines, quotes, $ ... never pass).
_only = $(if $(findstring |$(call _strip_chars,$1,$2)|,||),yes)
# $(call _check,VAR,CHARS,what): stop unless $(VAR) holds only CHARS (it may be empty).
_check = $(if $(call _only,$($1),$2),,$(error $1 must be $3))
# $(call _check_set,VAR,CHARS,what): the same, and $(VAR) must not be empty.
_check_set = $(if $($1),$(call _check,$1,$2,$3),$(error $1 must be $3))

_goals := $(or $(MAKECMDGOALS),help)
ifneq ($(filter keys fingerprint,$(_goals)),)
  $(call _check,NAME,$(_name_chars),a user name (1-32 of A-Z a-z 0-9 _ -))
endif
ifneq ($(filter bot,$(_goals)),)
  $(call _check,BOT,$(_name_chars),one of the example bots: $(BOTS))
  ifneq ($(BOT),)
    ifeq ($(filter $(BOT),$(BOTS)),)
      $(error no bot named '$(BOT)'; bots: $(BOTS))
    endif
  endif
endif
ifneq ($(filter broker client bot keys fingerprint,$(_goals)),)
  $(call _check_set,CONFIG,$(_path_chars),a file path (A-Z a-z 0-9 _ - . /))
endif
ifneq ($(filter bench,$(_goals)),)
  $(if $(call _only,$(subst $(_space),,$(ARGS)),$(_args_chars)),,$\
    $(error ARGS must be options for python -m bench: words of A-Z a-z 0-9 _ - . / = separated by spaces))
endif
ifneq ($(filter soak attack,$(_goals)),)
  $(call _check_set,DURATION,$(_digits),a whole number of seconds)
endif
ifneq ($(filter soak,$(_goals)),)
  $(call _check_set,KILL_BROKER_EVERY,$(_digits),a whole number of seconds (0: never))
endif
ifneq ($(filter backup,$(_goals)),)
  $(call _check_set,CONFIG,$(_path_chars),a file path (A-Z a-z 0-9 _ - . /))
  $(call _check_set,TO,$(_path_chars),the path of the copy to write (A-Z a-z 0-9 _ - . /))
endif
ifneq ($(filter fuzz,$(_goals)),)
  $(call _check_set,FUZZ_SECONDS,$(_digits),a whole number of seconds)
endif

override export ZCHAT_NAME         := $(NAME)
override export ZCHAT_BOT          := $(BOT)
override export ZCHAT_CONFIG       := $(CONFIG)
override export ZCHAT_ARGS         := $(ARGS)
override export ZCHAT_DURATION     := $(DURATION)
override export ZCHAT_KILL_EVERY   := $(KILL_BROKER_EVERY)
override export ZCHAT_TO           := $(TO)
override export ZCHAT_FUZZ_SECONDS := $(FUZZ_SECONDS)
override export ZCHAT_PYTHON       := $(PYTHON)

# ---------------------------------------------------------------- targets

.PHONY: help broker client bot keys fingerprint backup test test-quick unit fuzz soak attack bench lint typecheck clean

help:
	@echo "make broker            start the broker on config.json's address"
	@echo "make client            start the terminal client (prompts for address and name)"
	@echo "make bot BOT=echo      run an example bot ($(BOTS)); registers its key if missing"
	@echo "make keys NAME=alice   create and register a user's key pair"
	@echo "make fingerprint NAME=alice   print a registered key's fingerprint, to compare out of band"
	@echo "make backup TO=file    a consistent copy of the broker's database, safe while it runs"
	@echo "make test              run the tests, ruff and mypy"
	@echo "make test-quick        the quick loop: unit and integration tests not marked slow, in two processes, and"
	@echo "                       ruff check (under a minute)"
	@echo "make unit              run only the unit tests (no sockets, quick)"
	@echo "make lint              ruff check and ruff format --check"
	@echo "make typecheck         mypy --strict on the whole project"
	@echo "make fuzz              fuzz every parser of peer bytes and a real broker's port (FUZZ_SECONDS=30 per target)"
	@echo "make soak              200 clients, traffic and churn against a real broker (DURATION=60 seconds;"
	@echo "                       KILL_BROKER_EVERY=10 kills it with SIGKILL and restarts it every 10 seconds)"
	@echo "make attack            every known attack at once on a real broker while honest users chat (DURATION=60)"
	@echo "make bench             measure the broker: deliveries/s, crypto bound, latency, relays, memory (ARGS=--json)"
	@echo "make clean             remove .venv and the tool caches (keys/ and data/ stay)"
	@echo "CONFIG=file            another config file for broker, client, bot, keys, fingerprint and backup"

# PYTHON only matters (and is only checked) when the venv has to be created.
$(RUNTIME_STAMP): requirements.txt
	$(if $(wildcard $(BIN)/python),,$(call _check_set,PYTHON,$(_path_chars) +,a Python command or path (A-Z a-z 0-9 _ - . / +)))
	test -x $(BIN)/python || "$$ZCHAT_PYTHON" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

broker: $(RUNTIME_STAMP)
	$(BIN)/python broker.py --config="$$ZCHAT_CONFIG"

client: $(RUNTIME_STAMP)
	$(BIN)/python chat_client.py --config="$$ZCHAT_CONFIG"

bot: $(RUNTIME_STAMP)
	@test -n "$$ZCHAT_BOT" || { echo "usage: make bot BOT=echo   (bots: $(BOTS))" >&2; exit 2; }
	@# A bot cannot type a passphrase: its key has none unless PASSPHRASE is set.
	@PASSPHRASE="$${PASSPHRASE-}" $(BIN)/python -m zchat.keystore --config="$$ZCHAT_CONFIG" --if-missing -- "$$ZCHAT_BOT"
	$(BIN)/python -m "bots.$$ZCHAT_BOT" --config="$$ZCHAT_CONFIG"

fingerprint: $(RUNTIME_STAMP)
	@test -n "$$ZCHAT_NAME" || { echo "usage: make fingerprint NAME=alice" >&2; exit 2; }
	@$(BIN)/python -m zchat.keystore --config="$$ZCHAT_CONFIG" --fingerprint -- "$$ZCHAT_NAME"

backup: $(RUNTIME_STAMP)
	$(BIN)/python broker.py --config="$$ZCHAT_CONFIG" --backup="$$ZCHAT_TO"

keys: $(RUNTIME_STAMP)
	@test -n "$$ZCHAT_NAME" || { echo "usage: make keys NAME=alice" >&2; exit 2; }
	$(BIN)/python -m zchat.keystore --config="$$ZCHAT_CONFIG" -- "$$ZCHAT_NAME"

# Two test processes: most tests wait on brokers and clients in other processes, so two keep both cores busy.
# worksteal: a process that runs out of tests takes some of the other's, so the few long ones do not end alone.
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal
	$(MAKE) --no-print-directory lint typecheck

fuzz: $(DEV_STAMP)
	@mkdir -p fuzz/crashes
	@for target in frames envelope broker client tcp; do \
		echo "== fuzzing $$target for $${ZCHAT_FUZZ_SECONDS}s"; \
		log=$$(mktemp); \
		$(BIN)/python -m fuzz.run $$target -max_total_time="$$ZCHAT_FUZZ_SECONDS" -print_final_stats=1 \
			-artifact_prefix=fuzz/crashes/$$target- >$$log 2>&1 \
			|| { tail -n 40 $$log; echo "fuzz target $$target failed; the input is in fuzz/crashes/"; exit 1; }; \
		grep -E '^(Done|stat::(number_of_executed_units|new_units_added))' $$log; rm -f $$log; \
	done

soak: $(RUNTIME_STAMP)
	$(BIN)/python -m soak --duration "$$ZCHAT_DURATION" --kill-broker-every "$$ZCHAT_KILL_EVERY"

attack: $(DEV_STAMP)
	$(BIN)/python -m attack --duration "$$ZCHAT_DURATION"

# ARGS is several words (ARGS="--clients 200"), so it is split, unquoted, on spaces; set -f stops any
# globbing. It is checked above to hold only A-Z a-z 0-9 _ - . / = and spaces.
bench: $(RUNTIME_STAMP)
	@set -f; $(BIN)/python -m bench $$ZCHAT_ARGS

# The quick loop: what is marked slow (more than a few seconds) and the CLI end-to-end tests are left to `make test`.
test-quick: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow" tests/unit tests/integration
	$(BIN)/ruff check .

unit: $(DEV_STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
