"""Error types raised by the crypto package."""


class CryptoError(Exception):
    """Something a peer sent did not open or verify. Deliberately vague."""

    def __init__(self) -> None:
        super().__init__("cryptographic check failed")


class KeyFileError(Exception):
    """A key file is missing, unreadable, locked, too small or of the wrong kind.

    Its message names the file and the problem, for a person to read.
    """
