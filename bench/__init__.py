"""Benchmark of the encrypted chat broker: `make bench` (`python -m bench`), `--json` for one JSON object.

In one run, on one machine, with one number of clients and message size:

1. the broker's encrypted deliveries per second (`broker.py` as its own
   process, saturated by prepared SEND frames, receivers only counting);
2. the crypto bound: deliveries per second one core could make doing nothing
   but the broker's crypto for this workload (`bench.cryptobound`);
3. latency, send to verified receipt, at half the measured capacity;
4. reference rows: a plain ZeroMQ relay and a CurveZMQ relay with the same
   fan-out (`bench.relay`);
5. scale: the broker's resident memory with many idle logged-in clients, and
   the time for a crowd of clients to log in at once;
6. the store's group commit (zchat/3): a commit of 1, 10 and 100 room
   messages timed alone, and the broker's commits per second in the
   throughput window (`bench.commit`).

`bench.run` runs it all; docs/PERFORMANCE.md explains the numbers.
"""
