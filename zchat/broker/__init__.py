"""What only the broker runs.

Sans-I/O (no socket, no clock, no file; time and registered keys come in as inputs):
core         the chat rules: sessions, statements, fan-out, heartbeats; the entry points the I/O loop calls
login        HELLO, the challenge and LOGIN, up to a proven login; who is turned away, and the welcome
sessions     a logged-in session and the budget its user shares across sessions
outbound     a session's outbound side: window, held frames, replay, backlog, sealing in order, mail pages
presence     joins and leaves, batched per session
archive      what the broker keeps, and on what terms: history, group commit, retention, mail and disk limits
work         the crypto jobs the core asks for, as plain data, and `run_inline`
store        the `Store` protocol the core writes to and reads from

With I/O:
main         the I/O loop and command line; it reads the key files (`registered`) and the clocks
sqlite_store the store in SQLite, sealed at rest; sqlite_file: the file under it, and `backup`
workers      where crypto jobs run (the loop, or a pool); worker_process: one worker process
admission    who may hold a connection (the ZAP policy); gatekeeper: the thread that applies it
ratelimit    token buckets and a log a peer cannot flood; process: the routing-id seed, the file limit
supervisor   the process `zchat-broker` and `python broker.py` start: it restarts a broker that died
"""
