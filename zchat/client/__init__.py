"""What only a client runs, and where a bot author starts.

from zchat.client import ChatClient         # blocking
from zchat.client import AsyncChatClient    # asyncio

session      one login session without sockets; core: the connection policy every driver runs
outbox       the acknowledged outbox; attempt: the reconnection backoff and a login attempt's handshake
transport    the DEALER speaking CurveZMQ; pins: trust on first use
driver       the socket driver and construction both clients share, and loading a client's keys
sync_client, async_client   the two ways of waiting: blocking and asyncio
running      what a program running a client decides (bad frames, the end, leaving, exit statuses)
bot          the runner the example bots share; terminal/: the terminal client (`zchat`, `python chat_client.py`)
"""

from zchat.client.async_client import AsyncChatClient
from zchat.client.sync_client import ChatClient

__all__ = ["AsyncChatClient", "ChatClient"]
