"""Example bots, each runnable with `make bot BOT=<name>` or `python -m bots.<name>`."""
