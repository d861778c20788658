"""One error root: every exception class the package defines descends from `zchat.errors.ChatError`.

A caller that wants "anything zchat raised on purpose" catches ChatError and nothing else. Read from the
source with `ast` (every class whose bases name an exception) and checked on the imported classes.
"""

from __future__ import annotations

import ast
import importlib

from tests.unit.test_layers import module_name, sources
from zchat.errors import ChatError, LocalProtocolError, RemoteProtocolError


def exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for path in sources("zchat") + sources("crypto"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        if not names:
            continue
        module = importlib.import_module(module_name(path))
        found.extend(
            cls for name in names if isinstance(cls := getattr(module, name), type) and issubclass(cls, BaseException)
        )
    return found


def test_every_exception_of_the_package_has_the_one_root():
    classes = exception_classes()
    assert len(classes) >= 10  # the reader found the tree, not nothing
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, ChatError)] == []


def test_crypto_store_and_key_file_errors_sit_under_the_root_and_local_is_apart_from_remote():
    from zchat import crypto

    assert issubclass(crypto.CryptoError, ChatError)
    assert issubclass(crypto.KeyFileError, ChatError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
