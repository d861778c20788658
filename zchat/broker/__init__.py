"""What only the broker runs.

core         the chat rules without sockets: logins, sessions, fan-out, heartbeats
store        the durable SQLite store, encrypted at rest
work         the crypto jobs the core asks for, as plain data; workers: where they run
admission    who may hold a connection (the ZAP policy); gatekeeper: the thread that applies it
ratelimit    token buckets and a log a peer cannot flood
main         the I/O loop and command line (`zchat-broker`, `python broker.py`)
"""
