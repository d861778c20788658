"""zchat: an encrypted group chat over ZeroMQ.

    zchat.crypto     the only code that touches PyCryptodome (crypto/ in the repository)
    zchat.protocol   the wire format, without I/O (zchat.protocol.events: what the broker sends a session);
                     zchat.events: what a client hands its user
    zchat.config, zchat.keystore, zchat.names, zchat.errors (the one error root): shared by both sides
    zchat.broker     what only the broker runs: its rules (core), store, crypto workers, gatekeeper, main
    zchat.client     what only a client runs: session, connection policy (core), drivers, terminal, bots

Bot authors start at `zchat.client.ChatClient`.
"""
