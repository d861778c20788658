"""The error tree, one root for the whole package: whose fault is it?

ChatError                    every error zchat raises on purpose; its message is one line for a person
├── ProtocolError
│   ├── LocalProtocolError   we tried to do something the protocol forbids (our bug or misuse)
│   │   └── Unsendable       a text or name that cannot be sent (also a ValueError, for bots written before)
│   └── RemoteProtocolError  the peer sent something malformed, forged, replayed or out of order
├── CryptoError              something a peer sent did not open or verify (zchat.crypto; deliberately vague)
├── ConfigError              a configuration file or value a person wrote is wrong
│   └── KeyFileError         a key file is missing, unreadable, locked, too small or of the wrong kind
├── StoreError               the broker's store cannot do what was asked (zchat.broker.store)
├── WorkerError              the broker's worker processes could not be started or keep dying
├── ConnectError             the broker is unreachable, refused us (LoginRefused), or failed to authenticate
└── StatementRefused         the broker refused a statement of ours and ended the session: log in again

This module imports nothing, so every layer may use it, `zchat.crypto` included.
"""


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(ChatError):
    pass


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class Unsendable(LocalProtocolError, ValueError):
    """A text or user name that cannot be sent; the message says why. Also a ValueError, as it always was."""


class ConfigError(ChatError):
    pass


class StoreError(ChatError):
    """The store cannot do what was asked. The message is one line a person can act on."""


class WorkerError(ChatError):
    """The worker processes could not be started or keep dying."""


class ConnectError(ChatError):
    pass


class BrokerBusy(ConnectError):
    pass


class LoginRefused(ConnectError):
    """The broker answered our login with REFUSED (or sealed its challenge to another key)."""


class DeliveryGap(RemoteProtocolError):
    pass


class StatementRefused(ChatError):
    """The broker could not accept one of our statements and ended the session; a new login resyncs.

    `seq` and `message_id` name the statement when the broker could read it (None and "" otherwise).
    """

    def __init__(self, message: str, seq: int | None = None, message_id: str = "") -> None:
        super().__init__(message)
        self.seq = seq
        self.message_id = message_id
