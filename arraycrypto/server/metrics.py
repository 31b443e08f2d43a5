"""The server's metrics: one declaration per metric, one renderer (Prometheus text 0.0.4).

Counters are plain attributes named after their metric, so the hot paths pay one
attribute increment (``metrics.pushes_total += n``). A labelled counter is a dict from
label values to a count (:meth:`Metrics.count`). Gauges owned by another room (the
fan-out's subscriber count, the task count) are read when ``/metrics`` is rendered.
PROTOCOL.md, section 6, lists the same names: change both together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

__all__ = ["METRICS", "Metric", "Metrics", "WindowMax"]


class Metric(NamedTuple):
    """One metric: its name (without the ``arraycrypto_`` prefix), type, help, labels."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...] = ()
    #: Label values always shown, at 0 before anything is counted.
    always: tuple[tuple[str, ...], ...] = ()


METRICS: Final = (
    Metric("connections_total", "counter", "TCP connections accepted."),
    Metric("connections", "gauge", "Open TCP connections."),
    Metric("subscribed_clients", "gauge", "Authenticated WebSocket clients."),
    Metric("handshakes_ok_total", "counter", "Successful handshakes."),
    Metric(
        "handshakes_failed_total",
        "counter",
        "Failed handshakes by reason.",
        ("reason",),
        (("authentication",), ("rejected",)),
    ),
    Metric("ticks_total", "counter", "Snapshots made."),
    Metric("ticks_skipped_total", "counter", "Ticks skipped because the loop stalled."),
    Metric("pushes_total", "counter", "Snapshot frames handed to client writers."),
    Metric(
        "dropped_clients_total",
        "counter",
        "Clients dropped by the server.",
        ("reason",),
        (("slow",), ("ping",), ("error",)),
    ),
    Metric("rejected_full_total", "counter", "Connections refused at max_connections."),
    Metric(
        "pending_evicted_total",
        "counter",
        "Unauthenticated connections closed to make room for newer ones.",
    ),
    Metric("pending_connections", "gauge", "Connections not yet authenticated."),
    Metric(
        "pending_evict_age_seconds",
        "gauge",
        "How long a pending connection may wait before a newcomer evicts it.",
    ),
    Metric(
        "accept_paused_total",
        "counter",
        "Times accepting paused: the pending pool full of connections too young to evict.",
    ),
    Metric(
        "http_requests_total",
        "counter",
        "HTTP shim requests by path and status.",
        ("path", "status"),
    ),
    Metric("push_duration_seconds_sum", "counter", "Time spent fanning out ticks."),
    Metric("push_duration_seconds_last", "gauge", "Fan-out time of the last tick."),
    Metric("tasks", "gauge", "Tasks in the server's event loop."),
    Metric(
        "accept_errors_total",
        "counter",
        "accept() failures for lack of resources (file descriptors).",
    ),
    Metric(
        "event_loop_lag_seconds_max",
        "gauge",
        "Largest lateness of the event loop over the last minute (stalls, GC pauses).",
    ),
    # Present when `arraycrypto serve` watches the collector (it does by default):
    Metric(
        "gc_pause_seconds_max",
        "gauge",
        "Longest garbage-collector pause over the last minute.",
    ),
    Metric("gc_collections_total", "counter", "Collections by generation.", ("generation",)),
    # Present only with --debug-objects (the soak uses it: it scans the heap).
    Metric("live_connection_objects", "gauge", "Connection objects alive (debug)."),
)


class Metrics:
    """The server's counters; ``render()`` exposes them with the declarations above."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections = 0
        self.handshakes_ok_total = 0
        self.ticks_total = 0
        self.ticks_skipped_total = 0
        self.pushes_total = 0
        self.rejected_full_total = 0
        self.pending_evicted_total = 0
        self.accept_paused_total = 0
        self.push_duration_seconds_sum = 0.0
        self.push_duration_seconds_last = 0.0
        self.accept_errors_total = 0
        self.handshakes_failed_total: dict[tuple[str, ...], int] = {}
        self.dropped_clients_total: dict[tuple[str, ...], int] = {}
        self.http_requests_total: dict[tuple[str, ...], int] = {}
        self.gc_collections_total: dict[tuple[str, ...], int] = {}
        #: How late the loop woke its sleepers lately (the ticker and the lag watcher
        #: record here): the ``event_loop_lag_seconds_max`` gauge.
        self.loop_lag = WindowMax()
        #: Gauges read at render time from the room that owns them; a metric with no
        #: gauge and no attribute is left out of the exposition.
        self.gauges: dict[str, Callable[[], float]] = {}

    def count(self, name: str, *labels: str) -> None:
        """Add one to the labelled counter ``name`` for these label values."""
        table: dict[tuple[str, ...], int] = getattr(self, name)
        table[labels] = table.get(labels, 0) + 1

    def value(self, name: str, *labels: str) -> float:
        """Return a metric's current value (for one label combination, if labelled)."""
        if name in self.gauges:
            return self.gauges[name]()
        current = getattr(self, name, None)
        if current is None:
            return float("nan")
        if isinstance(current, dict):
            return float(current.get(labels, 0))
        return float(current)

    def snapshot(self) -> dict[str, Any]:
        """Every metric's current values, as JSON-able data (for :meth:`render`'s peers)."""
        out: dict[str, Any] = {}
        for metric in METRICS:
            if metric.labels:
                table: dict[tuple[str, ...], int] = getattr(self, metric.name)
                out[metric.name] = [[list(values), count] for values, count in table.items()]
            elif metric.name in self.gauges or hasattr(self, metric.name):
                out[metric.name] = self.value(metric.name)
        return out

    def render(
        self,
        extra: tuple[tuple[str, str], ...] = (),
        peers: Sequence[tuple[tuple[tuple[str, str], ...], dict[str, Any]]] = (),
    ) -> bytes:
        """Return the Prometheus text exposition; ``extra`` labels go on every sample.

        ``peers``: other processes' :meth:`snapshot`, each with its own labels (the
        workers of one server): rendered in the same families, so one scrape of any
        worker returns every worker's series, to be summed with ``sum without (worker)``.
        """
        sources = [(extra, self.snapshot()), *peers]
        out: list[str] = []
        for metric in METRICS:
            name = f"arraycrypto_{metric.name}"
            out.append(f"# HELP {name} {metric.help}")
            out.append(f"# TYPE {name} {metric.kind}")
            for labels, values in sources:
                value = values.get(metric.name)
                if metric.labels:
                    samples = {tuple(v): 0 for v in metric.always}
                    samples.update((tuple(v), c) for v, c in value or ())
                    for label_values, count in sorted(samples.items()):
                        pairs = (*labels, *zip(metric.labels, label_values, strict=True))
                        out.append(f"{name}{_labels(pairs)} {count}")
                elif value is not None:
                    out.append(f"{name}{_labels(labels)} {_number(value)}")
        return ("\n".join(out) + "\n").encode()


class WindowMax:
    """The largest value recorded over roughly the last ``window`` seconds.

    Kept in a few buckets, so recording is O(1) and nothing grows: a gauge for "the
    worst stall lately" that every scraper sees alike, unlike a reset-on-read maximum.
    """

    __slots__ = ("_buckets", "_span", "_starts")

    def __init__(self, window: float = 60.0, buckets: int = 6) -> None:
        self._span = window / buckets
        self._buckets = [0.0] * buckets
        self._starts = [float("-inf")] * buckets

    def record(self, value: float, now: float) -> None:
        """Note ``value`` at monotonic time ``now``."""
        slot = int(now // self._span) % len(self._buckets)
        start = now - now % self._span
        if self._starts[slot] != start:
            self._starts[slot] = start
            self._buckets[slot] = 0.0
        self._buckets[slot] = max(self._buckets[slot], value)

    def value(self, now: float) -> float:
        """The largest value recorded within the window before ``now``."""
        oldest = now - self._span * len(self._buckets)
        return max(
            (v for v, start in zip(self._buckets, self._starts, strict=True) if start > oldest),
            default=0.0,
        )


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    # Prometheus label values: backslash, double quote and newline are escaped.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
