"""The connection's round-trip time as the server's TCP stack reports it, for the ``srtt_ms`` /
``rttvar_ms`` features (feature schema v2, :mod:`modi.runtime.features`).

On Linux, ``getsockopt(IPPROTO_TCP, TCP_INFO)`` fills ``struct tcp_info`` (``linux/tcp.h``):
eight one-byte fields (state, ca_state, retransmits, probes, backoff, options, the window
scales, two flag bits), then ``__u32`` fields ``rto, ato, snd_mss, rcv_mss, unacked, sacked,
lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv, pmtu,
rcv_ssthresh, rtt, rttvar, ...``; so ``tcpi_rtt`` (the smoothed RTT, RFC 6298's SRTT) is the
``__u32`` at byte :data:`RTT_OFFSET` = 68 and ``tcpi_rttvar`` at 72, both in microseconds. The
layout has only grown at its end since Linux 2.6, so these offsets hold on every kernel that has
``TCP_INFO``.

Where the connection's RTT comes from (:class:`RttSources`), per request:

* ``tcp_info``: the socket under the request (``modi-serve`` runs uvicorn with a protocol that
  hands the socket to the app, :func:`modi.experiments.serve.header_deadline_protocol`);
* ``header``: the ``X-Modi-Srtt-Ms`` / ``X-Modi-Rttvar-Ms`` headers (a proxy in front measures
  the client's connection and passes it on; the server's own socket then sees the proxy);
* ``field``: the ``srtt_ms`` / ``rttvar_ms`` query fields the client sends;
* ``none``: unknown (NaN): a policy that reads the RTT answers with its fallback and the reason.

A value of 0 from the kernel means no RTT sample yet (the kernel keeps at least 1/8 µs once it
has one): unknown.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
from typing import Any, Literal

log = logging.getLogger(__name__)

#: Byte offset of ``tcpi_rtt`` in ``struct tcp_info`` (``tcpi_rttvar`` follows it).
RTT_OFFSET = 68
_RTT = struct.Struct("=II")
#: Bytes of ``struct tcp_info`` asked for (the kernel fills what it has, up to this).
TCP_INFO_BYTES = 104

#: Where a request's RTT features came from.
RttSource = Literal["tcp_info", "header", "field", "none"]
RTT_SOURCES: tuple[str, ...] = ("tcp_info", "header", "field", "none")
#: ``ServeConfig.rtt_source`` settings: ``auto`` (the socket, else the request's header or
#: field, else unknown), ``socket`` (the socket only), ``request`` (the request's header or
#: field only: behind a proxy), ``none`` (never: always unknown).
RTT_MODES: tuple[str, ...] = ("auto", "socket", "request", "none")
#: Request headers a proxy in front may set (ms), preferred to the query fields.
SRTT_HEADER = "x-modi-srtt-ms"
RTTVAR_HEADER = "x-modi-rttvar-ms"


def tcp_info_supported() -> bool:
    """Whether this platform reports ``TCP_INFO`` (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")


def read_tcp_rtt(sock: Any) -> tuple[float, float] | None:
    """``(srtt_ms, rttvar_ms)`` of a connected TCP socket from ``TCP_INFO``, or ``None`` when
    unavailable (not Linux, not a TCP socket, closed, no RTT sample yet). Never raises."""
    if sock is None or not tcp_info_supported():
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    if not isinstance(raw, bytes) or len(raw) < RTT_OFFSET + _RTT.size:
        return None
    rtt_us, var_us = _RTT.unpack_from(raw, RTT_OFFSET)
    if rtt_us == 0:
        return None
    return rtt_us / 1000.0, var_us / 1000.0


class RttSources:
    """Counts of the RTT source used per request, with a log line the first time each is used.

    Args:
        mode: one of :data:`RTT_MODES`.
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode not in RTT_MODES:
            raise ValueError(f"rtt_source must be one of {list(RTT_MODES)}, got {mode!r}")
        self.mode = mode
        self._counts = dict.fromkeys(RTT_SOURCES, 0)
        self._lock = threading.Lock()

    @property
    def counts(self) -> dict[str, int]:
        """Requests per source so far."""
        with self._lock:
            return dict(self._counts)

    def describe(self) -> str:
        """What this mode reads, in words (the start-up log line)."""
        tcp = "TCP_INFO available" if tcp_info_supported() else "no TCP_INFO on this platform"
        return {
            "auto": f"the socket's TCP_INFO ({tcp}), else the request's {SRTT_HEADER} header or "
            "srtt_ms field, else unknown",
            "socket": f"the socket's TCP_INFO only ({tcp}), else unknown",
            "request": f"the request's {SRTT_HEADER} header or srtt_ms field only (behind a "
            "proxy), else unknown",
            "none": "nothing: srtt_ms/rttvar_ms are always unknown",
        }[self.mode]

    def choose(
        self,
        tcp: tuple[float, float] | None,
        header: tuple[float | None, float | None],
        field: tuple[float | None, float | None],
    ) -> tuple[float | None, float | None, RttSource]:
        """The ``(srtt_ms, rttvar_ms, source)`` a request gets under this mode (``None``:
        unknown), counted."""
        src: RttSource = "none"
        srtt: float | None = None
        var: float | None = None
        if self.mode in ("auto", "socket") and tcp is not None:
            (srtt, var), src = tcp, "tcp_info"
        elif self.mode in ("auto", "request"):
            if header[0] is not None:
                (srtt, var), src = header, "header"
            elif field[0] is not None:
                (srtt, var), src = field, "field"
        with self._lock:
            first = self._counts[src] == 0
            self._counts[src] += 1
        if first:
            log.info("connection RTT (srtt_ms/rttvar_ms): first request from source %r (mode %s)",
                     src, self.mode)  # fmt: skip
        return srtt, var, src
