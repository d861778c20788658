"""The crypto bound: deliveries per second one core could make doing nothing but the broker's crypto.

For one chat message with `clients` people online the broker (chat.broker_core,
`_on_send` and `_event`) does, with the project's own `crypto` calls:

    open_envelope(broker key, SEND body)      once per message    (RSA-OAEP decrypt + AES-GCM)
    verify(author key, statement, sig)        once per message    (RSA-PSS verify)
    mac(delivery key, delivery)               once per recipient  (HMAC-SHA256)
    seal(recipient key, EVENT plaintext)      once per recipient  (RSA-OAEP encrypt + AES-GCM)

For one login it does: open_envelope(HELLO), sign (its proof), seal (the
CHALLENGE), open_envelope(LOGIN), verify (the login signature), mac + seal
(the welcome). `login_s` is that, timed the same way.

This module times exactly that, on real inputs built with `chat.protocol`, in a
tight loop in one process (so on one core): full fan-outs, one after the
other, for at least `min_seconds`. JSON, routing and sockets are left out: it
is what the broker could reach if everything but the crypto were free.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import crypto
from bench.stats import message_text
from chat import protocol as p


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


def measure(
    broker_key: crypto.PrivateKey,
    author: crypto.PrivateKey,
    recipient_keys: Sequence[crypto.PublicKey],
    clients: int,
    message_bytes: int,
    min_seconds: float,
) -> CryptoBound:
    """Time the broker's crypto for one message to `clients - 1` recipients (keys reused round robin)."""
    recipients = [recipient_keys[i % len(recipient_keys)].public_key() for i in range(clients - 1)]
    session = p.session_id(secrets.token_bytes(p.NONCE_BYTES))
    statement = p.Statement.build("chat", "c0000", session, 1, time.time(), message_text(0, 1, message_bytes))
    signing_input = p.statement_signing_input(statement.text)
    signed = p.SignedStatement(statement.text, crypto.sign(author, signing_input))
    send_context, event_context = p.context(p.SEND), p.context(p.EVENT)
    body = crypto.seal(broker_key.public_key(), signed.encode(), send_context)
    author_public = author.public_key()
    delivery_key = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
    event = {"type": "chat", **signed.to_doc()}
    plaintext = p.seal_delivery(delivery_key, session, 1, event)
    delivery = p.dump_doc({"session": session, "seq": 1, "event": event}).decode("utf-8")
    mac_input = p.delivery_mac_input(delivery)

    def fanout() -> None:
        crypto.open_envelope(broker_key, body, send_context)
        crypto.verify(author_public, signing_input, signed.signature)
        for recipient in recipients:
            crypto.mac(delivery_key, mac_input)
            crypto.seal(recipient, plaintext, event_context)

    hello_body = crypto.seal(broker_key.public_key(), bytes(200), p.context(p.HELLO))
    login_body = crypto.seal(broker_key.public_key(), bytes(600), p.context(p.LOGIN))
    login_signature = crypto.sign(author, signing_input)

    def login() -> None:
        crypto.open_envelope(broker_key, hello_body, p.context(p.HELLO))
        proof = crypto.sign(broker_key, signing_input)
        crypto.seal(author_public, proof + bytes(200), p.context(p.CHALLENGE))
        crypto.open_envelope(broker_key, login_body, p.context(p.LOGIN))
        crypto.verify(author_public, signing_input, login_signature)
        crypto.mac(delivery_key, mac_input)
        crypto.seal(author_public, plaintext, event_context)

    fanout()  # warm up: first-call costs (imports, caches) are not the broker's steady state
    fanout_s, calls = _timed(fanout, min_seconds)
    part = min_seconds / 4  # the breakdown, for the table; the bound itself is the full fan-out above
    return CryptoBound(
        clients=clients,
        fanout_s=fanout_s,
        open_s=_per_call(lambda: crypto.open_envelope(broker_key, body, send_context), part),
        verify_s=_per_call(lambda: crypto.verify(author_public, signing_input, signed.signature), part),
        mac_s=_per_call(lambda: crypto.mac(delivery_key, mac_input), part),
        seal_s=_per_call(lambda: crypto.seal(recipients[0], plaintext, event_context), part),
        fanouts_timed=calls,
        login_s=_per_call(login, part),
    )
