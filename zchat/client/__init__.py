"""What only a client runs, and where a bot author starts.

from zchat.client import ChatClient         # blocking
from zchat.client import AsyncChatClient    # asyncio

session      one login session without sockets; core: the connection policy every driver runs
transport    the DEALER speaking CurveZMQ; pins: trust on first use
sync_client, async_client   the drivers; bot: the runner the example bots share
display, main               the terminal client (`zchat`, `python chat_client.py`)
"""

from zchat.client.async_client import AsyncChatClient
from zchat.client.sync_client import ChatClient

__all__ = ["AsyncChatClient", "ChatClient"]
