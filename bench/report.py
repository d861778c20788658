"""The human-readable table: every row, what it means, and the command that reproduces it."""

from __future__ import annotations

import textwrap
from typing import Any

Row = tuple[str, str, str]  # what, the number, what it means


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _busy(numbers: dict[str, Any], server: str) -> str:
    """How busy the server's loop thread and the generator's were: whichever is near 1.00 was the limit."""
    return (
        f"{server} loop thread {_n(numbers['target_loop_busy'], 2)} busy ({_n(numbers['target_cores_busy'], 2)} cores"
        f" with I/O), generator loop {_n(numbers['generator_loop_busy'], 2)} ({_n(numbers['generator_cores_busy'], 2)})"
    )


def _commit_rows(r: dict[str, Any]) -> list[Row]:
    """zchat/3's store: a group commit timed alone, and how the saturated broker grouped its commits."""
    d = r["details"]
    rows = [
        (
            f"store: commit of {group['messages']} message{'s' if group['messages'] > 1 else ''}, p50 / p99",
            f"{_n(group['ms_p50'], 2)} / {_n(group['ms_p99'], 2)} ms",
            f"{_n(group['messages_per_s'])} messages/s committed one group after another; the writes (seen + "
            f"add_chat per message) included, commit() alone p50 {_n(group['commit_only_ms_p50'], 2)} ms; "
            f"{group['rounds']} commits, {_n(group['wal_frames_per_commit'], 1)} log pages each",
        )
        for group in d["commit"]["groups"]
    ]
    broker, one = d["broker"], d["broker_one_process"]
    rows.append(
        (
            "broker: commits/s in the throughput window",
            f"{_n(r['broker_commits_per_s'], 1)}/s",
            f"{_n(r['broker_messages_per_commit'], 2)} messages per commit, {_n(broker['wal_frames_per_commit'], 1)} "
            f"log pages per commit, {broker['wal_restarts']} log restarts (read from its -wal file); one process: "
            f"{_n(one['commits_per_s'], 1)}/s, {_n(one['messages_per_commit'], 2)} messages per commit",
        )
    )
    return rows


def _broker_rows(r: dict[str, Any]) -> list[Row]:
    """The broker against its crypto bound: throughput, the bound, the efficiencies, one process."""
    d = r["details"]
    crypto, broker = d["crypto_mean"], d["broker"]
    recipients = r["clients"] - 1
    return [
        (
            "broker: encrypted deliveries/s",
            _n(r["deliveries_per_s"]),
            f"{_n(broker['messages_per_s'], 1)} msg/s x {recipients} recipients; {_busy(broker, 'broker')};"
            f" {broker['lost']} lost",
        ),
        (
            "crypto bound: deliveries/s on one core",
            _n(r["crypto_bound_per_s_one_core"]),
            f"one fan-out {_n(r['fanout_crypto_ms'], 1)} ms = open {_n(crypto['open_ms'], 2)} + verify "
            f"{_n(crypto['verify_ms'], 2)} + {recipients} x (seal {_n(crypto['seal_ms'], 3)} + HMAC "
            f"{_n(crypto['mac_ms'], 3)}) ms; timed before and after the broker's rows "
            f"({d['crypto_bound_drift']:+.0%} apart), their mean",
        ),
        (
            f"efficiency = deliveries / ({r['cores']} cores x bound)",
            _n(r["efficiency"], 2),
            f"{r['workers']} crypto workers; target >= 0.75 on all cores",
        ),
        (
            f"crypto on all {r['cores']} cores at once: deliveries/s",
            _n(r["crypto_bound_per_s_all_cores"]),
            f"the bound's loop in {r['cores']} processes together, "
            f"{_n(r['crypto_bound_per_s_all_cores'] / r['crypto_bound_per_s_one_core'], 2)} x one core; "
            f"the broker reaches {_n(r['efficiency_all_cores'], 2)} of it",
        ),
        (
            "one process (workers: 0): deliveries/s",
            _n(r["deliveries_per_s_one_process"]),
            f"efficiency {_n(r['efficiency_one_process'], 2)} of one core's bound (target >= 0.9); "
            f"{_busy(d['broker_one_process'], 'broker')}",
        ),
    ]


def _latency_and_relay_rows(r: dict[str, Any]) -> list[Row]:
    """Latency at half capacity, and the reference relays' throughput."""
    d = r["details"]
    latency, plain, curve = d["latency"], d["plain_relay"], d["curve_relay"]
    return [
        (
            "latency p50 / p99 at half capacity",
            f"{_n(r['latency_ms_p50'], 1)} / {_n(r['latency_ms_p99'], 1)} ms",
            f"{_n(latency['offered_deliveries_per_s'])} deliveries/s offered; {latency['verifying_receivers']} "
            f"verifying receivers, {latency['samples']} samples; p90 {_n(latency['ms_p90'], 1)}, max "
            f"{_n(latency['ms_max'], 1)} ms",
        ),
        (
            "reference: plain ZeroMQ relay, deliveries/s",
            _n(r["plain_relay_deliveries_per_s"]),
            f"no crypto; {_busy(plain, 'relay')}",
        ),
        (
            "reference: CurveZMQ relay, deliveries/s",
            _n(r["curve_relay_deliveries_per_s"]),
            f"ZAP allow-list (unlisted key admitted: {curve.get('unlisted_key_admitted')}); {_busy(curve, 'relay')}",
        ),
    ]


def _login_rows(r: dict[str, Any]) -> list[Row]:
    """Memory with idle clients, the login storm, and what CurveZMQ costs per login and per delivery."""
    d = r["details"]
    storm, idle, hs, frames = d["login_storm"], d["idle"], d["curve_handshake"], d["curve_frame_cost"]
    return [
        (
            f"broker RSS, {idle['clients']} idle logged-in clients",
            f"{_n(r['rss_mb_1000_clients'], 1)} MiB",
            f"empty broker {_n(idle['rss_mb_empty'], 1)} MiB; filling it took {_n(idle['fill_s'], 1)} s "
            f"({_n(idle['fill_broker_cpu_s'], 1)} s broker CPU), {idle['logins_in_flight']} logins at a time",
        ),
        (
            f"login storm: {storm['clients']} clients at once",
            f"{_n(r['login_storm_s'], 2)} s",
            f"target {_n(r['login_storm_target_s'], 2)} s (one login's crypto {_n(r['login_crypto_ms'], 1)} ms); "
            f"floor with the clients' crypto on these cores too {_n(r['login_storm_floor_s'], 2)} s "
            f"(+{_n(r['client_login_crypto_ms'], 1)} ms per login); "
            f"per client p50 {_n(storm['per_client_s_p50'], 2)} s; broker CPU {_n(storm['broker_cpu_s'], 1)} s, "
            f"clients {_n(storm['generator_cpu_s'], 1)} s; turned away: "
            + (", ".join(f"{n} {what}" for what, n in storm["turned_away"].items()) or "none"),
        ),
        (
            "CurveZMQ handshake: broker CPU per login",
            f"{_n(r['curve_handshake_broker_cpu_ms'], 2)} ms",
            f"vs the RSA work per HELLO {_n(r['login_crypto_ms'], 1)} ms "
            f"({_n(r['login_crypto_per_curve_handshake'], 0)} x); wall time p50 {_n(r['curve_handshake_ms'], 2)} ms "
            f"on loopback, {hs['count']} one at a time; client CPU {_n(hs['client_cpu_ms'], 2)} ms",
        ),
        (
            "CurveZMQ per delivery: CPU",
            f"{_n(r['curve_cpu_us_per_delivery'], 1)} us",
            f"encrypt + decrypt of one EVENT ({frames['body_bytes']}-byte body), CurveZMQ less plain "
            f"TCP ({_n(frames['curve_us'], 1)} vs {_n(frames['plain_us'], 1)} us); "
            f"the broker's ACKs read: {_n(d['broker']['acks_per_s'])}/s",
        ),
    ]


def render_table(r: dict[str, Any]) -> str:
    """The heading, every row lined up, the command that reproduces the run, the notes and any problems."""
    rows = _broker_rows(r) + _latency_and_relay_rows(r) + _login_rows(r) + _commit_rows(r)
    machine = r["machine"]
    lines = [
        f"zchat benchmark{' (--quick)' if r['quick'] else ''}: {r['clients']} clients, {r['message_bytes']}-byte "
        f"messages, RSA-{r['key_bits']}, {r['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"libzmq {machine['libzmq']}, {_n(r['duration_s'], 1)} s windows",
        "",
    ]
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    for name, value, note in rows:
        lines.append(f"  {name:<{width}}  {value:>{value_width}}  {note}")
    lines += ["", f"reproduce: {r['command']}   (took {_n(r['bench_s'])} s; --json for every number)", "notes:"]
    for note in r["notes"]:
        lines += textwrap.wrap(note, 116, initial_indent="  - ", subsequent_indent="    ")
    if r["problems"]:
        lines.append("PROBLEMS:")
        lines += [f"  - {problem}" for problem in r["problems"]]
    return "\n".join(lines)
