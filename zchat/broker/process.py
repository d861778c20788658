"""What the broker's process sets up around its loop: a secret start for libzmq's routing ids, and its file limit.

`zchat.broker.main` calls both before it opens its socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import resource
import secrets

log = logging.getLogger("broker")


def seed_routing_ids() -> None:
    """Start libzmq's routing-id counter at a secret random place.

    libzmq numbers connections from C `rand()`, which nothing seeds, so the ids of
    an unseeded broker are the same after every start. A peer that claims the id
    libzmq will give the next connection makes libzmq abort the whole process
    (socket_base.cpp, add_out_pipe). With the counter's start secret, a peer has
    to guess 32 bits, with no answer to learn from: the broker never shows a
    routing id to anyone.
    """
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(secrets.randbits(32)))
    except (OSError, AttributeError):
        log.warning("cannot seed the C library's rand(): routing ids are predictable")


def raise_open_file_limit() -> None:
    """Allow as many open files as the system lets this process have: each connection holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
