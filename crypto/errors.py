"""Error types raised by the crypto package, under the package's one error root (`zchat.errors`)."""

from zchat.errors import ChatError, ConfigError


class CryptoError(ChatError):
    """Something a peer sent did not open or verify. Deliberately vague."""

    def __init__(self) -> None:
        super().__init__("cryptographic check failed")


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, locked, too small or of the wrong kind.

    Its message names the file and the problem, for a person to read.
    """
