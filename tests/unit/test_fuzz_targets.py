"""The fuzz targets, driven by hypothesis: no input makes a parser raise anything but its named error.

`make fuzz` runs the same targets under atheris for longer.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS
from zchat import protocol as p

SEPARATOR = b"\xff\xfe"
frame_like = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.one_of(st.sampled_from([p.MARKER, *p.CLIENT_COMMANDS, *p.BROKER_COMMANDS]), st.binary(max_size=200)),
        max_size=5,
    ).map(SEPARATOR.join),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=20)), max_size=6).map(
        lambda d: str(d).replace("'", '"').encode()
    ),
)


# `tcp` writes to a real broker process's TCP port; unit tests use no sockets and no processes.
# tests/integration/test_open_network.py runs it with these same inputs.
IN_PROCESS = sorted(name for name in TARGETS if name != "tcp")


@pytest.mark.parametrize("name", IN_PROCESS)
def test_target_accepts_any_input(name):
    target = TARGETS[name]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frame_like)
    def run(data: bytes) -> None:
        target(data)

    run()
