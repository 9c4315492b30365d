"""``GET /metrics``: Prometheus text exposition via prometheus-client.

A custom collector reads the core's plain counters at scrape time, so the
hot path only increments ints and never touches a metrics library.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from ._http import HTTPRoutes
    from ._server import Server

__all__ = ["render_metrics"]


class _Collector:
    def __init__(self, server: Server) -> None:
        self.server = server

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        server = self.server
        hub = server.hub
        c = hub.counters
        ws_clients = sum(1 for p in server.peers.values() if p.conn.client is not None)
        yield GaugeMetricFamily(
            "pcclog_connections", "Open WebSocket connections", value=ws_clients
        )
        yield CounterMetricFamily(
            "pcclog_connections", "TCP connections accepted", value=server.connections_total
        )
        yield GaugeMetricFamily(
            "pcclog_sessions", "Sessions in the registry", value=len(hub.sessions)
        )
        yield CounterMetricFamily(
            "pcclog_messages_in", "Client messages received", value=c.messages_in
        )
        yield CounterMetricFamily(
            "pcclog_messages_out", "Entries queued to viewers", value=c.deliveries
        )
        yield CounterMetricFamily(
            "pcclog_bytes_out", "Bytes written to sockets", value=server.bytes_out
        )
        yield CounterMetricFamily("pcclog_gaps", "gap messages sent", value=c.gaps)
        yield CounterMetricFamily(
            "pcclog_slow_consumer_drops",
            "Log entries dropped for slow viewers",
            value=c.slow_consumer_drops,
        )
        yield CounterMetricFamily(
            "pcclog_slow_consumer_disconnects",
            "Viewers closed with 1013",
            value=c.slow_consumer_disconnects,
        )
        yield CounterMetricFamily(
            "pcclog_ping_timeouts", "Connections closed with 1011", value=c.ping_timeouts
        )
        yield CounterMetricFamily(
            "pcclog_auth_failures", "Refused tokens and auth deadlines", value=c.auth_failures
        )
        yield CounterMetricFamily("pcclog_errors_sent", "error replies sent", value=c.errors_sent)
        yield CounterMetricFamily(
            "pcclog_rate_limited", "Messages refused by the rate limit", value=c.rate_limited
        )
        yield GaugeMetricFamily(
            "pcclog_queued_bytes",
            "Outbound bytes held for connections (queued or not yet written)",
            value=hub.queued_bytes,
        )
        yield GaugeMetricFamily(
            "pcclog_history_bytes", "Bytes of in-memory history", value=hub.history_bytes
        )
        yield GaugeMetricFamily(
            "pcclog_memory_budget_bytes", "MEMORY_BUDGET", value=hub.limits.memory_budget
        )
        yield GaugeMetricFamily(
            "pcclog_producers_paused",
            "1 while queued output and history are over MEMORY_BUDGET",
            value=1.0 if hub.producers_paused else 0.0,
        )
        yield CounterMetricFamily(
            "pcclog_history_shed_bytes",
            "History bytes evicted to stay under MEMORY_BUDGET",
            value=c.history_shed,
        )
        yield CounterMetricFamily(
            "pcclog_lines_cut", "Messages cut at MAX_LINE_BYTES", value=c.lines_cut
        )
        redactions = CounterMetricFamily(
            "pcclog_redactions", "Secrets masked, by rule (SPEC §8)", labels=["rule"]
        )
        for rule, count in sorted(hub.redactor.counts.items()):
            redactions.add_metric([rule], count)
        yield redactions
        ready = GaugeMetricFamily(
            "pcclog_source_ready", "1 when a log source is connected", labels=["source"]
        )
        for source in server.sources:
            ready.add_metric([source.name], 1.0 if source.ready else 0.0)
        yield ready


def render_metrics(server: Server, owner: HTTPRoutes) -> tuple[str, bytes]:
    """The exposition; the registry is made once and kept by ``owner``."""
    registry = owner.metrics_registry
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(server))
        owner.metrics_registry = registry
    return CONTENT_TYPE_LATEST, generate_latest(registry)
