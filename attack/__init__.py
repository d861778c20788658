"""Attack run (issues 11 and 18): every known attack at once on a real broker while honest users chat; a verdict.

    python -m attack [--duration 30] [--json] [--quick] [--attacks a,b,...]

`attack.run` owns the run: a throw-away workspace with keys and config.json,
`broker.py` as its own process, sampling of its memory, CPU and store size.
`attack.measure` reads the broker (its log, its store and the bound on it,
the flood's CPU share); `attack.report` owns the report and the verdict
against the targets (broker up, memory growth <= 100 MB, store growth <= the
attackers' quotas, honest p99 <= 1 s, nothing lost or duplicated, an insider
held to the message rate, a connection flood costing the broker at most a
quarter of a core). `attack.honest` owns the
honest users' process, `attack.attackers` the attacker processes and the list
of attacks, `attack.common` what they share (an insider's session among it),
`attack.insiders` the registered users' attacks of issue 18, `attack.flood`
the replayed-HELLO connection flood, `attack.zmtp` the hand-written ZMTP bytes
and the prediction of an unseeded libzmq's routing ids.
"""
