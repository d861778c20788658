"""The terminal client (`zchat`, `python chat_client.py`), on `zchat.client.AsyncChatClient`.

app        main(): the command line, and the one asyncio loop for a terminal (prompt_toolkit) and piped stdin
prompts    the start-up questions (or the answers read from piped stdin) and the keys
commands   what a typed line does: /who, /whois, /msg, /me, /trust, /exit, /shutdown, /help; Tab completion
output     where what the client shows goes: plain lines or, with --json, one JSON object per line
display    how an event looks on a line: timestamps, colours, wrapping, peer strings made printable
"""
