"""Soak test: hundreds of real clients, steady traffic and churn against one real broker, every message accounted for.

    python -m soak [--duration 60] [--clients 200] [--rate 2.0] [--churn 0.005] [--workers N] [--json] [--seed S]

`soak.run` makes a throw-away directory with a config.json and a key pair per
client (generated in parallel), starts `broker.py --config ...` as its own
process the way a person would, and spreads the clients (`zchat.client.ChatClient`,
as bots) over worker processes (`soak.worker`). Each worker drives its share
in one non-blocking loop. Once everyone is logged in, the clients send chat
messages at a steady total rate while the churning half leaves and comes back;
after the sending window the run drains, closes every client, stops the broker
with SIGTERM and checks (`soak.stats`) that no message was lost, duplicated or
reordered. Exit status 0 only when all of that holds and the broker exited 0.
"""
