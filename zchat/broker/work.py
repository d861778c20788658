"""The broker's crypto work as plain data: the jobs its core asks for, and the one function that does each.

`BrokerCore` does no RSA private-key or per-recipient work itself. It returns
jobs next to the frames that are ready to send: open a client's envelope, sign
and seal a login challenge, seal one delivery. `JobRunner.perform()` does one
job. The broker runs jobs in its own loop (`workers: 0`) or in worker
processes (`zchat.broker.workers`), which carry batches of jobs and their results as
ZeroMQ frames with `encode_jobs`/`decode_jobs` and
`encode_results`/`decode_results`. Those frames only ever travel between the
broker and its own workers, over a private ipc:// socket.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Protocol

from zchat import crypto
from zchat import protocol as p
from zchat.protocol import events as wire


@dataclass(frozen=True)
class Outgoing:
    """Frames ready to send to one ROUTER identity."""

    identity: bytes
    frames: list[bytes]


@dataclass(frozen=True)
class OpenJob:
    """Open a client's HELLO, LOGIN or SEND envelope with the broker's key.

    A SEND names its `owner` (the user: whose turn it is, and whose budget it uses) and its `session` (the
    session id: its result is for that session only, and `Cancel` drops it unopened once the session ended).
    """

    identity: bytes
    command: bytes
    body: bytes
    owner: str = ""
    session: str = ""


@dataclass(frozen=True)
class Opened:
    """An OpenJob's result, for `BrokerCore.opened()`; `plaintext` is None when the envelope did not open."""

    identity: bytes
    command: bytes
    plaintext: bytes | None
    session: str = ""  # the OpenJob's session, as it came


def require_plaintext(plaintext: bytes | None) -> bytes:
    """An `Opened` result's plaintext; CryptoError when the envelope did not open."""
    if plaintext is None:
        raise crypto.CryptoError()
    return plaintext


@dataclass(frozen=True)
class ChallengeJob:
    """Sign the broker's proof for a login and seal the CHALLENGE to the user's registered key."""

    identity: bytes
    key_der: bytes
    user: str
    client_nonce: bytes
    server_nonce: bytes
    delivery_key: bytes


@dataclass(frozen=True)
class DeliveryJob:
    """MAC one event under the session's delivery key and seal it to the recipient's key."""

    identity: bytes
    key_der: bytes
    delivery_key: bytes
    session_id: str
    seq: int
    event: dict[str, Any] | str  # a worker gets the event's JSON text: it is sealed as it came


@dataclass(frozen=True)
class Cancel:
    """A session ended: drop its SEND envelopes not yet opened (no CPU is spent on a session that is gone)."""

    owner: str
    session: str


Job = OpenJob | ChallengeJob | DeliveryJob
Work = Outgoing | Job | Cancel
Result = Outgoing | Opened

KEY_CACHE_LIMIT = 10_000


class Core(Protocol):
    """What `run_inline` hands results back to (zchat.broker.core.BrokerCore)."""

    def opened(self, result: Opened, now: float, wall: float | None = None) -> list[Work]: ...

    def sendable(self, items: list[Outgoing], now: float) -> list[Work]: ...


def run_inline(
    core: Core, runner: JobRunner, work: list[Work], now: float, wall: float | None = None
) -> list[Outgoing]:
    """Do every job in `work` now, in order, feeding opened envelopes back to `core`: the frames to send."""
    out: list[Outgoing] = []
    queue = collections.deque(work)
    while queue:
        item = queue.popleft()
        if isinstance(item, Outgoing):
            out.append(item)
            continue
        if isinstance(item, Cancel):  # nothing waits here: every job runs at once
            continue
        result = runner.perform(item)
        if isinstance(result, Opened):
            queue.extendleft(reversed(core.opened(result, now, wall)))
        else:  # sealed frames go out now; what sendable() makes (more backlog to seal) waits its turn
            for made in core.sendable([result], now):
                if isinstance(made, Outgoing):
                    out.append(made)
                else:
                    queue.append(made)
    return out


class JobRunner:
    """Does jobs with the broker's private key; keeps recipients' keys imported."""

    def __init__(self, broker_key: crypto.PrivateKey) -> None:
        self.broker_key = broker_key
        self._keys: dict[bytes, crypto.PublicKey] = {}
        self._last_event: dict[str, Any] | None = None
        self._last_event_json = ""

    def perform(self, job: Job) -> Result:
        if isinstance(job, OpenJob):
            try:
                plaintext: bytes | None = crypto.open_envelope(self.broker_key, job.body, p.context(job.command))
            except crypto.CryptoError:
                plaintext = None
            return Opened(job.identity, job.command, plaintext, job.session)
        if isinstance(job, ChallengeJob):
            signed = p.broker_proof_input(job.user, job.client_nonce, job.server_nonce, job.delivery_key)
            proof = crypto.sign(self.broker_key, signed)
            challenge = p.Challenge(job.user, job.client_nonce, job.server_nonce, job.delivery_key, proof)
            body = crypto.seal(self._key(job.key_der), challenge.encode(), p.context(p.CHALLENGE))
            return Outgoing(job.identity, p.encode_frames(p.CHALLENGE, body))
        plaintext = wire.seal_delivery(job.delivery_key, job.session_id, job.seq, self._event_json(job.event))
        body = crypto.seal(self._key(job.key_der), plaintext, p.context(p.EVENT))
        return Outgoing(job.identity, p.encode_frames(p.EVENT, body))

    def _event_json(self, event: dict[str, Any] | str) -> str:
        """A broadcast's deliveries share one event object: serialise it once."""
        if isinstance(event, str):
            return event
        if event is not self._last_event:
            self._last_event, self._last_event_json = event, p.dump_doc(event).decode("utf-8")
        return self._last_event_json

    def _key(self, der: bytes) -> crypto.PublicKey:
        key = self._keys.get(der)
        if key is None:
            if len(self._keys) >= KEY_CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[der] = crypto.public_key_from_der(der)
        return key


# ------------------------------------------------------------ frames between the broker and its workers

_OPEN, _CHALLENGE, _DELIVERY, _OUTGOING, _OPENED = b"O", b"C", b"D", b"S", b"R"


def encode_jobs(jobs: list[Job]) -> list[bytes]:
    """[event count, each distinct event's JSON, then each job's frames]; a broadcast's event is written once."""
    events: dict[int, int] = {}
    event_frames: list[bytes] = []
    job_frames: list[bytes] = []
    for job in jobs:
        if isinstance(job, OpenJob):
            job_frames += [_OPEN, job.identity, job.command, job.body, job.owner.encode(), job.session.encode()]
        elif isinstance(job, ChallengeJob):
            job_frames += [_CHALLENGE, job.identity, job.key_der, job.user.encode(), job.client_nonce]
            job_frames += [job.server_nonce, job.delivery_key]
        else:
            index = events.get(id(job.event))
            if index is None:
                index = events[id(job.event)] = len(event_frames)
                event = job.event
                event_frames.append(event.encode("utf-8") if isinstance(event, str) else p.dump_doc(event))
            job_frames += [_DELIVERY, job.identity, job.key_der, job.delivery_key, job.session_id.encode()]
            job_frames += [str(job.seq).encode(), str(index).encode()]
    return [str(len(event_frames)).encode(), *event_frames, *job_frames]


def decode_jobs(frames: list[bytes]) -> list[Job]:
    count = int(frames[0])
    events = [frame.decode("utf-8") for frame in frames[1 : 1 + count]]
    jobs: list[Job] = []
    i = 1 + count
    while i < len(frames):
        tag = frames[i]
        if tag == _OPEN:
            owner, session = frames[i + 4].decode(), frames[i + 5].decode()
            jobs.append(OpenJob(frames[i + 1], frames[i + 2], frames[i + 3], owner, session))
            i += 6
        elif tag == _CHALLENGE:
            identity, key_der, user, client_nonce, server_nonce, delivery_key = frames[i + 1 : i + 7]
            jobs.append(ChallengeJob(identity, key_der, user.decode(), client_nonce, server_nonce, delivery_key))
            i += 7
        elif tag == _DELIVERY:
            identity, key_der, delivery_key, session_id, seq, index = frames[i + 1 : i + 7]
            event = events[int(index)]
            jobs.append(DeliveryJob(identity, key_der, delivery_key, session_id.decode(), int(seq), event))
            i += 7
        else:
            raise ValueError(f"unknown job tag {tag!r}")
    return jobs


def encode_results(results: list[Result]) -> list[bytes]:
    frames: list[bytes] = []
    for result in results:
        if isinstance(result, Opened):
            opened = b"" if result.plaintext is None else b"+" + result.plaintext
            frames += [_OPENED, result.identity, result.command, opened, result.session.encode()]
        else:
            frames += [_OUTGOING, result.identity, str(len(result.frames)).encode(), *result.frames]
    return frames


def decode_results(frames: list[bytes]) -> list[Result]:
    results: list[Result] = []
    i = 0
    while i < len(frames):
        tag = frames[i]
        if tag == _OPENED:
            opened = frames[i + 3]
            results.append(Opened(frames[i + 1], frames[i + 2], opened[1:] if opened else None, frames[i + 4].decode()))
            i += 5
        elif tag == _OUTGOING:
            count = int(frames[i + 2])
            results.append(Outgoing(frames[i + 1], frames[i + 3 : i + 3 + count]))
            i += 3 + count
        else:
            raise ValueError(f"unknown result tag {tag!r}")
    return results
