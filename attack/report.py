"""The attack run's report: its numbers section by section, the targets met or missed, the printed verdict."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from attack.common import Stats
from attack.honest import HonestResult
from attack.measure import StoreBound, log_numbers
from harness.process import BrokerProcess
from harness.stats import percentile
from zchat.config import Config

# The targets (issues 11 and 18), on 2 cores.
MAX_MEMORY_GROWTH_MB = 100.0
MAX_P99_MS = 1000.0
MAX_FLOOD_SHARE = 0.25  # of a core: what one address flooding connections may cost the broker


@dataclass(frozen=True)
class Memory:
    """Resident memory of the broker and its children (MiB): before the attacks, the peak, at the end."""

    baseline: float
    peak: float
    end: float | None
    samples: int


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def report(
    args: argparse.Namespace,
    broker: BrokerProcess,
    broker_up: bool,
    exit_status: int | None,
    broker_cpu: float | None,
    memory: Memory,
    honest: HonestResult,
    attacks: dict[str, Stats | str],
    config: Config,
    store: dict[str, Any],
    bound: StoreBound,
    share: dict[str, float] | None,
) -> dict[str, Any]:
    """The run's numbers, one section each, and the targets met or missed."""
    attacker_cpu = sum(float(s.get("cpu_s", 0)) for s in attacks.values() if isinstance(s, dict))
    targets = {
        "broker_up": broker_up,
        "memory_growth_le_100mb": memory.peak - memory.baseline <= MAX_MEMORY_GROWTH_MB,
        "store_growth_le_quotas": store["growth_bytes"] <= bound.total,
        **honest_targets(honest),
        **attack_targets(args, config, attacks, share),
    }
    return {
        "ok": all(targets.values()),
        "targets": targets,
        "duration_s": args.duration,
        "scale": args.scale,
        "key_bits": args.bits,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1min_before_after": list(args.load),
        "broker": {
            "up": broker_up,
            "exit_status": exit_status,
            "cpu_s": _round(broker_cpu),
            **log_numbers(broker.log_path.read_bytes()),
            **({} if broker_up else {"log_tail": broker.log_tail()}),
        },
        "memory": {
            "baseline_mb": _round(memory.baseline),
            "peak_mb": _round(memory.peak),
            "end_mb": _round(memory.end),
            "growth_mb": _round(memory.peak - memory.baseline),
            "samples": memory.samples,
        },
        "store": {**store, "bound_mb": round(bound.total / 1e6, 1), "bound": bound.numbers()},
        "flood_cpu": share,
        "honest": honest_numbers(args, honest),
        "attacks": attacks,
        "attackers_cpu_s": round(attacker_cpu, 1),
    }


def honest_targets(honest: HonestResult) -> dict[str, bool]:
    p99 = percentile(honest.latencies_ms, 99)
    return {
        "p99_le_1s": p99 is not None and p99 <= MAX_P99_MS,
        "nothing_lost": honest.lost() == 0 and honest.expected() > 0,
        "nothing_duplicated": honest.duplicated == 0,
    }


def attack_targets(
    args: argparse.Namespace, config: Config, attacks: dict[str, Stats | str], share: dict[str, float] | None
) -> dict[str, bool]:
    """The targets of the attacks that ran: the refilling user held to its rate, the flood's cost."""
    targets: dict[str, bool] = {}
    refill = attacks.get("rate_refill")
    if refill is not None:
        # The broker's bucket: `rate` per second, bursts of twice that.
        rate = config.messages_per_second_per_user
        targets["refill_within_rate"] = isinstance(refill, dict) and refill.get("accepted_seen", 0) <= rate * (
            args.duration + 2
        )
    if "hello_flood" in attacks:
        targets["flood_le_quarter_core"] = share is not None and share.get("share", 1.0) <= MAX_FLOOD_SHARE
    return targets


def honest_numbers(args: argparse.Namespace, honest: HonestResult) -> dict[str, Any]:
    return {
        "clients": len(honest.sent),
        "interval_s": args.interval,
        "sent": sum(honest.sent.values()),
        "expected_deliveries": honest.expected(),
        "delivered": len(honest.latencies_ms),
        "lost": honest.lost(),
        "duplicated": honest.duplicated,
        "unexpected": honest.unexpected,
        "latency_ms_p50": _round(percentile(honest.latencies_ms, 50)),
        "latency_ms_p99": _round(percentile(honest.latencies_ms, 99)),
        "latency_ms_max": _round(max(honest.latencies_ms, default=None)),
        "connection_losses": honest.connection_losses,
        "sessions_closed": honest.sessions_closed,
        "send_errors": honest.send_errors,
        "drained": honest.drained,
        "drain_s": honest.drain_s,
        "login_s": honest.login_s,
        "max_turn_s": _round(honest.max_turn_s, 3),
        "cpu_s": honest.cpu_s,
        "notices": dict(honest.notices.most_common(10)),
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def print_report(numbers: dict[str, Any]) -> None:
    _print_broker(numbers["broker"], numbers["memory"], numbers["store"])
    _print_honest(numbers["honest"])
    _print_attacks(numbers)
    print("targets:")
    for name, met in numbers["targets"].items():
        print(f"  {name + ':':<24} {'met' if met else 'MISSED'}")
    load = numbers["load_avg_1min_before_after"]
    busy = " (already busy before the start: other work competed for the CPU)" if load[0] > 1.0 else ""
    print(f"machine:            {numbers['cores']} cores, 1-min load average {load[0]} before, {load[1]} after{busy}")
    print(f"verdict:            {'PASS' if numbers['ok'] else 'FAIL'}")


def _print_broker(b: dict[str, Any], m: dict[str, Any], st: dict[str, Any]) -> None:
    """The broker's lines: up, memory, store (and what it holds), log."""
    print(
        f"broker up:          {b['up']} (exit status after SIGTERM: {b['exit_status']};"
        f" {b['cpu_s']} CPU seconds during the run, workers included)"
    )
    print(
        f"broker memory:      {m['baseline_mb']} MB at the start, peak {m['peak_mb']} MB,"
        f" growth {m['growth_mb']} MB ({m['samples']} samples; broker + its worker processes)"
    )
    bd = st["bound"]
    print(
        f"broker store:       {st['start_mb']} MB at the start, peak {st['peak_mb']} MB, {st['end_mb']} MB at the end:"
        f" growth {st['growth_mb']} MB against a bound of {st['bound_mb']} MB"
        f" ({len(bd['mailboxes'])} mailboxes x {bd['mailbox_bytes']} + {len(bd['senders'])} senders x"
        f" {bd['sent_mail_bytes']} + history {bd['history_size']} x {bd['max_message_bytes']} bytes)"
    )
    if "error" in st:
        print(f"  store contents:   not read: {st['error']}")
    else:
        boxes = ", ".join(f"{box['rows']} ({box['mb']} MB)" for box in st["mailboxes"]) or "none"
        print(
            f"  store contents:   {st['mail_rows']} mails waiting ({st['mail_mb']} MB), by mailbox: {boxes};"
            f" {st['history_rows']} history rows, {st['seen_rows']} remembered message ids"
        )
    print(
        f"broker log:         {b['log_bytes']} bytes, {b['log_lines']} lines ({b['tracebacks']} tracebacks,"
        f" {b['assertion_failures']} assertion failures, {b['internal_errors']} internal errors,"
        f" {b['suppressed_summaries']} suppression summaries)"
    )


def _print_honest(h: dict[str, Any]) -> None:
    print(
        f"honest users:       {h['clients']} clients, {h['sent']} messages sent, {h['delivered']} of"
        f" {h['expected_deliveries']} deliveries received; lost {h['lost']}, duplicated {h['duplicated']},"
        f" unexpected {h['unexpected']}"
    )
    print(
        f"honest latency:     p50 {h['latency_ms_p50']} ms, p99 {h['latency_ms_p99']} ms, max {h['latency_ms_max']} ms"
        f" (connection losses {h['connection_losses']}, send errors {h['send_errors']},"
        f" drained in {h['drain_s']} s, client CPU {h['cpu_s']} s)"
    )
    for text, count in h["notices"].items():
        print(f"  honest notice:    {count} x {text}")


def _print_attacks(numbers: dict[str, Any]) -> None:
    """Each attack's stats, the flood's cost, and the broker's log tail when it went down."""
    print(f"attacks ({numbers['attackers_cpu_s']} CPU seconds in all):")
    for kind, stats in numbers["attacks"].items():
        shown = stats if isinstance(stats, str) else ", ".join(f"{k} {_number(v)}" for k, v in stats.items())
        print(f"  {kind + ':':<19} {shown}")
    flood = numbers["flood_cpu"]
    if flood and "share" in flood:
        print(
            f"flood's cost:       {flood['share']} of a core: the broker's process used {flood['process_cores_on']}"
            f" cores while the flood was on, {flood['process_cores_off']} while it was off; its threads other than"
            f" the main loop {flood['threads_cores_on']} and {flood['threads_cores_off']}"
        )
    if "log_tail" in numbers["broker"]:
        print("broker log tail:")
        print(numbers["broker"]["log_tail"])
