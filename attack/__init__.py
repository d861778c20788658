"""Attack run (issue 11): findings 1-6 at once against a real broker while honest users chat, with a verdict.

    python -m attack [--duration 30] [--json] [--quick]

`attack.run` owns the run: a throw-away workspace with keys and config.json,
`broker.py` as its own process, memory sampling, the report and the verdict
against the targets (broker up, memory growth <= 100 MB, honest p99 <= 1 s,
nothing lost). `attack.honest` owns the honest users' process,
`attack.attackers` the six attacker processes, `attack.zmtp` the hand-written
ZMTP bytes and the prediction of an unseeded libzmq's routing ids.
"""
