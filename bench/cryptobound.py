"""The crypto bound: deliveries per second one core could make doing nothing but the broker's crypto.

For one chat message with `clients` people online the broker (zchat.broker.core,
`_on_send` and `_event`) does, with the project's own `crypto` calls:

    open_envelope(broker key, SEND body)      once per message    (RSA-OAEP decrypt + AES-GCM)
    verify(author key, statement, sig)        once per message    (RSA-PSS verify)
    mac(delivery key, delivery)               once per recipient  (HMAC-SHA256)
    seal(recipient key, EVENT plaintext)      once per recipient  (RSA-OAEP encrypt + AES-GCM)

For one login it does: open_envelope(HELLO), sign (its proof), seal (the
CHALLENGE), open_envelope(LOGIN), verify (the login signature), mac + seal
(the welcome). `login_s` is that, timed the same way. `client_login_s` is the
client's side of a login (open the challenge, verify the broker's proof, sign
the LOGIN, seal it): in the storm the clients run on the same cores.

This module times exactly that, on real inputs built with `zchat.protocol`, in a
tight loop in one process (so on one core): full fan-outs, one after the
other, for at least `min_seconds`. JSON, routing and sockets are left out: it
is what the broker could reach if everything but the crypto were free.
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import message_text
from zchat import crypto
from zchat import protocol as p
from zchat.protocol import events as wire


@dataclass(frozen=True)
class CryptoBound:
    clients: int
    fanout_s: float  # one message's crypto: open + verify + (clients - 1) x (mac + seal)
    open_s: float
    verify_s: float
    mac_s: float
    seal_s: float
    fanouts_timed: int
    login_s: float  # one login's crypto: two opens, one signature, one verify, two seals, one mac
    client_login_s: float  # the client's: one open, one verify, one signature, one seal

    @property
    def recipients(self) -> int:
        return self.clients - 1

    @property
    def deliveries_per_s(self) -> float:
        return self.recipients / self.fanout_s

    @property
    def messages_per_s(self) -> float:
        return 1 / self.fanout_s


def averaged(before: CryptoBound, after: CryptoBound) -> CryptoBound:
    """One bound from two timings of it (before and after the broker's rows): each time is their mean."""

    def mean(a: float, b: float) -> float:
        return (a + b) / 2

    return CryptoBound(
        clients=before.clients,
        fanout_s=mean(before.fanout_s, after.fanout_s),
        open_s=mean(before.open_s, after.open_s),
        verify_s=mean(before.verify_s, after.verify_s),
        mac_s=mean(before.mac_s, after.mac_s),
        seal_s=mean(before.seal_s, after.seal_s),
        fanouts_timed=before.fanouts_timed + after.fanouts_timed,
        login_s=mean(before.login_s, after.login_s),
        client_login_s=mean(before.client_login_s, after.client_login_s),
    )


def _timed(action: Callable[[], object], min_seconds: float) -> tuple[float, int]:
    """Seconds per call and the number of calls, running `action` for at least `min_seconds` (and 3 calls)."""
    calls, started = 0, time.perf_counter()
    while True:
        action()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and calls >= 3:
            return elapsed / calls, calls


def _per_call(action: Callable[[], object], min_seconds: float) -> float:
    return _timed(action, min_seconds)[0]


class Workload:
    """One message's and one login's crypto, on real inputs built with `zchat.protocol`."""

    def __init__(
        self,
        broker_key: crypto.PrivateKey,
        author: crypto.PrivateKey,
        recipient_keys: Sequence[crypto.PublicKey],
        clients: int,
        message_bytes: int,
    ) -> None:
        self.broker_key = broker_key
        self.author = author
        self.recipients = [recipient_keys[i % len(recipient_keys)].public_key() for i in range(clients - 1)]
        session = p.session_id(secrets.token_bytes(p.NONCE_BYTES))
        text = message_text(0, 1, message_bytes)
        statement = p.Statement.build("chat", "c0000", session, 1, time.time(), text, message_id=p.new_message_id())
        self.signing_input = p.statement_signing_input(statement.text)
        self.signed = p.SignedStatement(statement.text, crypto.sign(author, self.signing_input))
        self.send_context, self.event_context = p.context(p.SEND), p.context(p.EVENT)
        self.body = crypto.seal(broker_key.public_key(), self.signed.encode(), self.send_context)
        self.author_public = author.public_key()
        self.delivery_key = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
        event = {"type": "chat", **self.signed.to_doc()}
        self.plaintext = wire.seal_delivery(self.delivery_key, session, 1, event)
        delivery = p.dump_doc({"session": session, "seq": 1, "event": event}).decode("utf-8")
        self.mac_input = p.delivery_mac_input(delivery)
        self.hello_body = crypto.seal(broker_key.public_key(), bytes(200), p.context(p.HELLO))
        self.login_body = crypto.seal(broker_key.public_key(), bytes(600), p.context(p.LOGIN))
        self.login_signature = crypto.sign(author, self.signing_input)
        self.challenge_body = crypto.seal(self.author_public, bytes(600), p.context(p.CHALLENGE))
        self.broker_public = broker_key.public_key()
        self.broker_proof = crypto.sign(broker_key, self.signing_input)

    def fanout(self) -> None:
        crypto.open_envelope(self.broker_key, self.body, self.send_context)
        crypto.verify(self.author_public, self.signing_input, self.signed.signature)
        for recipient in self.recipients:
            crypto.mac(self.delivery_key, self.mac_input)
            crypto.seal(recipient, self.plaintext, self.event_context)

    def login(self) -> None:
        crypto.open_envelope(self.broker_key, self.hello_body, p.context(p.HELLO))
        proof = crypto.sign(self.broker_key, self.signing_input)
        crypto.seal(self.author_public, proof + bytes(200), p.context(p.CHALLENGE))
        crypto.open_envelope(self.broker_key, self.login_body, p.context(p.LOGIN))
        crypto.verify(self.author_public, self.signing_input, self.login_signature)
        crypto.mac(self.delivery_key, self.mac_input)
        crypto.seal(self.author_public, self.plaintext, self.event_context)

    def client_login(self) -> None:
        crypto.open_envelope(self.author, self.challenge_body, p.context(p.CHALLENGE))
        crypto.verify(self.broker_public, self.signing_input, self.broker_proof)
        crypto.sign(self.author, self.signing_input)
        crypto.seal(self.broker_public, bytes(600), p.context(p.LOGIN))


def measure(
    broker_key: crypto.PrivateKey,
    author: crypto.PrivateKey,
    recipient_keys: Sequence[crypto.PublicKey],
    clients: int,
    message_bytes: int,
    min_seconds: float,
) -> CryptoBound:
    """Time the broker's crypto for one message to `clients - 1` recipients (keys reused round robin)."""
    w = Workload(broker_key, author, recipient_keys, clients, message_bytes)
    w.fanout()  # warm up: first-call costs (imports, caches) are not the broker's steady state
    fanout_s, calls = _timed(w.fanout, min_seconds)
    part = min_seconds / 4  # the breakdown, for the table; the bound itself is the full fan-out above
    return CryptoBound(
        clients=clients,
        fanout_s=fanout_s,
        open_s=_per_call(lambda: crypto.open_envelope(broker_key, w.body, w.send_context), part),
        verify_s=_per_call(lambda: crypto.verify(w.author_public, w.signing_input, w.signed.signature), part),
        mac_s=_per_call(lambda: crypto.mac(w.delivery_key, w.mac_input), part),
        seal_s=_per_call(lambda: crypto.seal(w.recipients[0], w.plaintext, w.event_context), part),
        fanouts_timed=calls,
        login_s=_per_call(w.login, part),
        client_login_s=_per_call(w.client_login, part),
    )


ALL_CORES_START_TIMEOUT = 120.0  # each process loads the keys and warms up before the common start


def _fanouts_per_s(
    key_files: Sequence[Path], clients: int, message_bytes: int, seconds: float, start: Any, results: Any
) -> None:
    """One process of `all_cores`: key_files are the broker's, the author's, then the recipients'."""
    broker_key, author, *others = [crypto.load_private_key(path) for path in key_files]
    w = Workload(broker_key, author, others or [author], clients, message_bytes)
    w.fanout()
    start.wait(timeout=ALL_CORES_START_TIMEOUT)  # every process times the same stretch of wall-clock time
    fanout_s, _ = _timed(w.fanout, seconds)
    results.put(1 / fanout_s)


def all_cores(key_files: Sequence[Path], clients: int, message_bytes: int, seconds: float, processes: int) -> float:
    """Deliveries per second with the same loop running in `processes` processes at once: what all the cores
    of this machine can do together (less than `processes` times one core's bound when they slow each other)."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    procs = [
        context.Process(target=_fanouts_per_s, args=(list(key_files), clients, message_bytes, seconds, start, results))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        rates = [results.get(timeout=ALL_CORES_START_TIMEOUT + 2 * seconds) for _ in procs]
    except queue.Empty:
        statuses = [proc.exitcode for proc in procs]
        raise RuntimeError(f"a timing process did not answer (exit statuses {statuses})") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return float(sum(rates)) * (clients - 1)
