"""Example bots, each runnable with `make bot BOT=<name>` or `.venv/bin/python -m bots.<name>`."""
