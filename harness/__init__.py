"""What the repository's tools (bench, soak, attack, fuzz) and the tests share around a real broker.

- `harness.process`: a server program as its own process (`ServerProcess`) and broker.py as one
  (`BrokerProcess`): started from a config in a working directory, its port read from its "listening on"
  line, its log, stopped, killed with its whole process tree, its memory and CPU;
- `harness.procfs`: the /proc readers behind those figures (Linux only);
- `harness.keys`: key pairs written as `zchat.keystore` writes them, one at a time or many in a process pool;
- `harness.dealer`: DEALER sockets to a broker, a client's or one with hand-picked credentials;
- `harness.stats`: percentiles;
- `harness.tool`: the frame of a load tool run from the command line (`python -m soak`, `python -m attack`).

Repository-only, like bench/ and soak/: not installed with zchat.
"""
