"""Look-alike user names: when two different names would read as the same person.

This module owns the rule that user names are unique ignoring case and
look-alike characters. It is pure (no ZeroMQ, no files): callers pass the names
they know, e.g. `zchat.keystore.registered_names(layout)`.

`name_skeleton` maps a name to its canonical form: casefold, then replace each
look-alike by one representative of its group.

    l  I  1  i  L      -> l    (the classic: alice, Alice, aIice, a1ice)
    o  O  0            -> o
    _  -               -> -    (a_b and a-b read alike in many fonts and underlined links)
    s  S  5            -> s    (chosen: yes)
    z  Z  2            -> z    (chosen: yes)
    b  B  8            -> b    (chosen: yes)

The last three groups are a choice: names are shown in fonts we do not pick
(terminals, screenshots, pasted into mail), and refusing a new name costs one
retry while an impersonation costs the room's trust. Multi-letter look-alikes
(`rn`/`m`, `vv`/`w`) are not folded: they are told apart in the monospace fonts
the client runs in.

`clashing_name(name, existing)` is the check: the first existing name that is a
different string with the same skeleton. The identical string is not a clash (it
is the same user).
"""

from __future__ import annotations

from collections.abc import Iterable

# Applied after casefold, so only lower-case letters need a mapping.
_LOOKALIKES = str.maketrans(
    {
        "i": "l",
        "1": "l",
        "0": "o",
        "_": "-",
        "5": "s",
        "2": "z",
        "8": "b",
    }
)


def name_skeleton(name: str) -> str:
    """The canonical form of `name`: casefolded, each look-alike replaced by its group's representative.

    Two names with the same skeleton look alike. The skeleton of a valid name is
    itself a valid name, and skeleton(skeleton(x)) == skeleton(x).
    """
    return name.casefold().translate(_LOOKALIKES)


def clashing_name(name: str, existing: Iterable[str]) -> str | None:
    """The first name in `existing` that differs from `name` but looks like it, or None.

    An identical string is the same user, not a clash.
    """
    skeleton = name_skeleton(name)
    for other in existing:
        if other != name and name_skeleton(other) == skeleton:
            return other
    return None
