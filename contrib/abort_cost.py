"""The cost of one broker abort, measured: `python contrib/abort_cost.py [--clients 3] [--rounds 5]`.

Starts `broker.py` as `make broker` does (under its supervisor) with fresh keys in a temporary directory and the
default config (heartbeats 1 s / 6 s, two crypto workers unless told), logs `--clients` users in, and with
one of them sending a message every 50 ms, kills the broker's process with SIGABRT (what libzmq does when a
claimed routing id collides with the one it makes up) `--rounds` times. For each round it prints when the
supervisor had a new broker listening, when every client was logged in again, and when the first message
sent after the abort was accepted, in seconds after the SIGABRT. A measurement, not a test: nothing here
passes or fails but the run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zchat import crypto  # noqa: E402  (the repository on the path first)
from zchat.client.sync_client import ChatClient  # noqa: E402
from zchat.events import Accepted, Welcome  # noqa: E402
from zchat.keystore import KeyLayout, write_private_key, write_public_key  # noqa: E402

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
LISTENING = re.compile(r"listening on tcp://")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_of(pid: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(kids) == 1:
            return int(kids[0])
        time.sleep(0.01)
    raise SystemExit("the supervisor has no broker process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3, choices=range(1, len(NAMES) + 1))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="crypto worker processes (default: the config's)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zchat-abort-"))
    layout = KeyLayout(root / "keys")
    names = NAMES[: args.clients]
    for name in ["broker", *names]:
        key = crypto.generate_private_key(2048)
        write_private_key(layout.broker_private if name == "broker" else layout.client_private(name), key)
        write_public_key(layout.broker_public if name == "broker" else layout.client_public(name), key)
    port = free_port()  # fixed: the restarted broker must listen where the first one did
    config: dict[str, object] = {"server_ip": "127.0.0.1", "server_port": port, "keys_dir": "keys"}
    if args.workers is not None:
        config["workers"] = args.workers
    (root / "config.json").write_text(json.dumps(config))
    log_path = root / "broker.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, str(ROOT / "broker.py"), "--config", str(root / "config.json")],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    clients: list[ChatClient] = []
    try:
        while not LISTENING.search(log_path.read_text()):
            if supervisor.poll() is not None:
                raise SystemExit(log_path.read_text())
            time.sleep(0.02)
        for name in names:
            clients.append(
                ChatClient.connect("127.0.0.1", port, name, layout.client_private(name), layout.broker_public)
            )
        rows = []
        for round_ in range(args.rounds):
            rows.append(one_round(supervisor.pid, clients, log_path, round_))
            print(
                f"round {round_ + 1}: broker listening again {rows[-1][0]:.2f} s, every client logged in again"
                f" {rows[-1][1]:.2f} s, first message after the abort accepted {rows[-1][2]:.2f} s",
                flush=True,
            )
        for label, index in (("listening", 0), ("logged in", 1), ("accepted", 2)):
            values = [row[index] for row in rows]
            print(f"{label}: median {statistics.median(values):.2f} s, max {max(values):.2f} s")
    finally:
        for client in clients:
            client.close(say_bye=False)
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def one_round(supervisor: int, clients: list[ChatClient], log_path: Path, round_: int) -> tuple[float, float, float]:
    sender = clients[0]
    for client in clients:  # quiet before the abort: everything answered, nothing left over
        client.poll(0.2)
        client.drain()
    broker = child_of(supervisor)
    listening_before = len(LISTENING.findall(log_path.read_text()))
    start = time.monotonic()
    os.kill(broker, signal.SIGABRT)
    first_after = sender.send(f"round {round_} after the abort")
    listening = logged_in = accepted = 0.0
    back: set[str] = set()
    next_send = start + 0.05
    while not (listening and logged_in and accepted):
        now = time.monotonic()
        if now - start > 120:
            raise SystemExit("no recovery within 120 s:\n" + log_path.read_text()[-3000:])
        if now >= next_send:
            sender.send(f"round {round_} at {now - start:.2f}")
            next_send = now + 0.05
        for client in clients:
            client.poll(0.005)
            for event in client.drain():
                if isinstance(event, Welcome):
                    back.add(client.name)
                elif isinstance(event, Accepted) and event.message_id == first_after and not accepted:
                    accepted = time.monotonic() - start
        if not listening and len(LISTENING.findall(log_path.read_text())) > listening_before:
            listening = time.monotonic() - start
        if not logged_in and len(back) == len(clients):
            logged_in = time.monotonic() - start
    return listening, logged_in, accepted


if __name__ == "__main__":
    sys.exit(main())
