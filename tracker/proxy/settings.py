"""The tunables of proxy mode's download path (:mod:`tracker.proxy.upstream`,
:mod:`tracker.proxy.bytepaths`): one frozen value, read where it is used, never copied, so that
replacing it (a test, a reload) reaches every part at its next use."""

from __future__ import annotations

import attrs

from tracker.net.sourcelimits import QUEUE


@attrs.frozen(cache_hash=True)
class ProxySettings:
    """Tunables of the download path (seconds and bytes)."""

    #: TCP (and TLS) connect timeout per source.
    connect_timeout: float = 5.0
    #: How long a source may take to answer with its status line and headers (and then to
    #: start its body); ``first_byte_timeout`` asks the next source much sooner.
    answer_timeout: float = 15.0
    #: When a plain request for a file of known size has no upstream answer after this long,
    #: its head goes out anyway (Firedancer gives a peer 1 s for the whole head, README.md#clients).
    early_head_after: float = 0.5
    #: Longest wait for one socket read of the body: a stalled upstream fails after this.
    read_timeout: float = 60.0
    #: Connections per download client (one client per TLS setting).
    max_connections: int = 512
    #: Bytes asked of the socket per read (the size of chunks, at most); a stream that passes
    #: its bytes through Python (the channel) reads less when many do (``channel_budget``).
    read_size: int = 1024 * 1024
    #: Pieces waiting between the upstream reader and the client writer, per stream, on top
    #: of the reader's read-ahead (which already holds what arrived while a piece is sent).
    queue_chunks: int = 0
    #: Memory shared by every stream that passes its bytes through Python (the channel: TLS
    #: upstreams, HTTP/2 clients); each holds up to CHANNEL_PIECES reads of its share, from
    #: ``smallest_read`` up to ``read_size`` (bench/README.md, "memory").
    channel_budget: int = 32 * 1024 * 1024
    smallest_read: int = 64 * 1024
    #: How long a stream waits for the server to start sending its body before deciding that
    #: the client went away (docs/architecture.md#traps-of-the-stack, 4).
    drain_start_timeout: float = 30.0
    #: Requests that wait at once for a transfer slot of one source (``source_limits``,
    #: docs/http-api.md "Source limits"); one more is answered 503 at once.
    busy_queue: int = QUEUE
    #: Longest wait in that queue: a slot that frees meanwhile is taken at once. A request
    #: that waits there gets no early head (its clock starts once a source is asked), so
    #: its answer is the source's head or a 503, never a 200 head whose body breaks.
    busy_wait: float = 5.0
    #: Redirects followed per source, each checked by the egress policy when it leaves the
    #: source's own origin.
    max_redirects: int = 5
    #: Waits before each attempt to resume a broken cache refresh with a Range request; as
    #: many attempts per break as there are delays (an attempt that brought bytes resets it).
    resume_delays: tuple[float, ...] = (0.2, 0.5, 1.0)
    #: How long a request waits for a refresh that has every byte to be synced and renamed
    #: into place (to be a cache hit) before it is streamed uncached instead.
    promotion_wait: float = 60.0
