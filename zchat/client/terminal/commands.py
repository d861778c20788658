"""What the terminal client does with a typed line: the commands, their help, and what Tab offers.

A line is a command (`COMMANDS`: /who, /whois, /msg, /me, /trust, /exit, /shutdown, /help), or a
message to everyone else in the room (`//TEXT` sends "/TEXT"). What a command answers goes to
`zchat.client.terminal.output.Output`; a message that cannot be sent is a warning there, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable

from zchat.client.async_client import AsyncChatClient
from zchat.client.terminal.output import Output
from zchat.errors import ConnectError, LocalProtocolError

COMMANDS: dict[str, tuple[str, str]] = {  # command -> (usage, what it does)
    "/who": ("/who", "list who is online, with key fingerprints"),
    "/whois": ("/whois NAME", "show NAME's full key fingerprint and whether it matches the one you pinned"),
    "/msg": ("/msg NAME TEXT", "send TEXT to NAME only (sealed to NAME's key like every message)"),
    "/me": ("/me TEXT", 'an action line: "* alice TEXT"'),
    "/trust": ("/trust NAME", "accept the key NAME has now, after a key change you checked out of band"),
    "/exit": ("/exit", "leave the chat (also Ctrl-D, or end of input)"),
    "/shutdown": ("/shutdown", "stop the broker (admins only)"),
    "/help": ("/help [COMMAND]", "this list, or one command's help"),
}
# What /help COMMAND adds to the command's line.
COMMAND_DETAILS: dict[str, str] = {
    "/msg": "The broker answers: '* (private to NAME) TEXT' once it has taken the message;\n"
    "'* queued for NAME (offline)' when NAME is offline (kept, sealed to NAME's key, and shown at NAME's\n"
    "next login, for up to mailbox_days); '! not delivered: <reason>' when it cannot (no such user,\n"
    "a full mailbox, too fast). Private messages are never in the room's history.",
    "/whois": "Compare the fingerprint with the one NAME reads out to you, or with `make fingerprint NAME=...`\n"
    "on the broker's machine: the same text means the same key.",
    "/trust": "Only after a key-change warning, and only once NAME has told you, out of band, the new\n"
    "fingerprint /whois shows: the old pin is then replaced and the warning stops.",
    "/exit": "Messages the broker has not answered yet are waited for a moment, then reported.",
    "/shutdown": "Every client is told and exits; the broker keeps the history for its next start.",
}
NAME_COMMANDS = ("/msg", "/whois", "/trust")  # Tab completes a name after these
HELP = "\n".join(
    [
        "commands:",
        *(f"  {usage:<17} {about}" for usage, about in COMMANDS.values()),
        '//TEXT sends "/TEXT"; anything else is sent to everyone else in the room.',
        "On a terminal, Tab completes names and commands.",
    ]
)


def completions(before: str, names: Iterable[str], me: str) -> list[tuple[str, int, str]]:
    """What Tab offers for the text before the cursor: (text to put in, where it starts (<= 0), shown as).

    A command at the start of the line (`/ex` -> `/exit`); a name after /msg, /whois and /trust; a name as
    `name: ` when the line starts with one. Names are those online, ourselves left out (but for /whois).
    """
    if before.startswith("/") and " " not in before:
        return [
            (command + (" " if " " in usage else ""), -len(before), command)
            for command, (usage, _) in COMMANDS.items()
            if command.startswith(before.lower())
        ]
    command, space, word = before.partition(" ")
    online = sorted(names, key=str.lower)
    if space and command in NAME_COMMANDS and " " not in word:
        return [
            (name + " ", -len(word), name)
            for name in online
            if name.lower().startswith(word.lower()) and (name != me or command == "/whois")
        ]
    if not before.startswith("/") and not space:  # the first word of a message: whom it is for
        return [
            (f"{name}: ", -len(before), name)
            for name in online
            if name != me and name.lower().startswith(before.lower())
        ]
    return []


async def command(client: AsyncChatClient, line: str, out: Output) -> bool:
    """Act on one input line (what it sends is noted in `out`); True means leave."""
    if not line:
        return False
    if line == "/exit":
        return True
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    try:
        if name == "/help":
            out.help(help_text(rest))
        elif name == "/who":
            await client.who()
        elif name == "/shutdown":
            await client.request_shutdown()
        elif name == "/whois" and rest:
            whois(client, rest, out)
        elif name == "/trust" and rest:
            trust(client, rest, out)
        elif name == "/msg" and len(rest.split(maxsplit=1)) == 2:
            to, text = rest.split(maxsplit=1)
            out.sending(await client.send(text, to=to), text, to)
        elif name == "/me" and rest:
            out.sending(await client.send(rest, action=True), rest, action=True)
        elif name in ("/whois", "/msg", "/me", "/trust"):
            out.warning(f"usage: {COMMANDS[name][0]}")
        elif line.startswith("/") and not line.startswith("//"):
            out.warning(f"unknown command {name}; /help lists the commands")
        else:
            text = line[1:] if line.startswith("//") else line
            out.sending(await client.send(text), text)
    except LocalProtocolError as exc:
        out.warning(f"not sent: {exc}")
    except ConnectError as exc:
        out.warning(str(exc))
    return False


def help_text(topic: str) -> str:
    """The command list, or one command's help (`/help msg` or `/help /msg`)."""
    if not topic:
        return HELP
    command = "/" + topic.removeprefix("/").split()[0].lower()
    if command not in COMMANDS:
        return f"no command {command}; /help lists the commands"
    usage, about = COMMANDS[command]
    details = COMMAND_DETAILS.get(command)
    return f"  {usage:<17} {about}" + (f"\n{details}" if details else "")


def whois(client: AsyncChatClient, name: str, out: Output) -> None:
    user = client.roster.get(name)
    if user is None:
        out.warning(f"{name} is not online")
        return
    pinned = client.pins.pins.get(name)
    out.whois(name, user.bot, user.fingerprint, pinned, client.pins.status(name, user.fingerprint))


def trust(client: AsyncChatClient, name: str, out: Output) -> None:
    """Pin the key `name` shows now in place of the one pinned before (the person checked it out of band)."""
    user = client.roster.get(name)
    fingerprint = user.fingerprint if user is not None else out.changed_keys.get(name)
    if fingerprint is None:
        out.warning(f"{name} is not online and showed no new key here; nothing to trust")
        return
    pinned = client.pins.pins.get(name)
    if pinned == fingerprint:
        out.info(f"{name}'s key {fingerprint} is the one pinned already")
        return
    if not client.pins.trust(name, fingerprint):
        out.warning(f"could not write {client.pins.path}: {name}'s new key is trusted for this session only")
    out.changed_keys.pop(name, None)
    out.trusted(name, fingerprint, pinned)
