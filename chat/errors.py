"""The error tree: whose fault is it?

ChatError
├── ProtocolError
│   ├── LocalProtocolError   we tried to do something the protocol forbids (our bug or misuse)
│   └── RemoteProtocolError  the peer sent something malformed, forged, replayed or out of order
├── ConfigError              a configuration file or value a person wrote is wrong
└── ConnectError             the broker is unreachable, refused us, or failed to authenticate
"""


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(ChatError):
    pass


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class ConfigError(ChatError):
    pass


class ConnectError(ChatError):
    pass


class BrokerBusy(ConnectError):
    pass


class DeliveryGap(RemoteProtocolError):
    pass
