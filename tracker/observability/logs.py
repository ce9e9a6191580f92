"""Structured logs: one event per line, as ``key=value`` text or as JSON.

Every module logs through the stdlib :mod:`logging` with :func:`log_event`::

    log = logging.getLogger(__name__)
    log_event(log, "warning", "scrape_failed", group="mainnet", target=url, error=str(exc))

which :func:`setup_logging` renders as one line on the chosen stream::

    2026-11-21T10:00:00.123Z WARNING scrape_failed group=mainnet target=http://a error="timed out"
    {"time": "2026-11-21T10:00:00.123Z", "level": "WARNING", "event": "scrape_failed", ...}

Records from other libraries (hypercorn, httpx) keep flowing through the same handler: their
event is the logger name and their text goes into a ``message`` field, so every line has the
same shape. An exception attached to a record becomes an ``error`` field (``Type: message``)
plus a ``traceback`` field whose newlines are escaped, so it never spans several lines.

Every URL in a line has its userinfo and query masked (``http://***@host/p?***``), whatever
field, message or exception text it is in: call sites log URLs as they are and can never leak
a password or an API key by forgetting to mask one.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Literal

import attrs

from tracker.observability.redact import redact_text

#: Levels accepted by :func:`setup_logging` and :func:`log_event` (``--log-level``).
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The attribute of a LogRecord that carries the fields of an event; named so that it cannot
# collide with LogRecord's own attributes.
_FIELDS_ATTR = "tracker_fields"
_RESERVED = frozenset({"time", "level", "event"})

# Libraries that log every request at INFO: at scrape rates that drowns the tracker's own events.
_CHATTY_LOGGERS = ("httpx", "httpcore", "hypercorn.access")
# Libraries whose DEBUG lines carry credentials: botocore prints the request it signs (the
# access key id in the Authorization header, signatures, presigned URLs), urllib3 the URLs.
# They stay at INFO under ``--log-level debug`` unless STORE_DEBUG_ENV asks for them.
_SECRET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
#: Set to 1 to get the object-store libraries' own DEBUG lines (credentials included).
STORE_DEBUG_ENV = "SNAPSHOT_TRACKER_STORE_DEBUG"


def log_event(
    logger: logging.Logger,
    level: int | str,
    event: str,
    /,
    *,
    exc_info: BaseException | bool = False,
    **fields: object,
) -> None:
    """Log ``event`` (a short snake_case name) with ``fields`` at ``level`` on ``logger``.

    ``level`` is a name from :data:`LEVELS` or a :mod:`logging` number. ``exc_info`` attaches an
    exception (``True``: the one being handled), rendered as ``error`` and ``traceback`` fields.
    Never raises for a field value: anything that is not a str, number, bool or None is
    rendered with ``str()``.
    """
    levelno = level if isinstance(level, int) else LEVELS[level]
    if logger.isEnabledFor(levelno):
        # stacklevel=2: the record points at the caller, not at this helper.
        logger.log(levelno, event, exc_info=exc_info, extra={_FIELDS_ATTR: fields}, stacklevel=2)


def setup_logging(
    level: str,
    fmt: Literal["text", "json"],
    stream: IO[str] | None = None,
    *,
    store_debug: bool = False,
) -> logging.Handler:
    """Send every log record, one line each, to ``stream`` (default: ``sys.stderr``).

    Configures the root logger: its previous handlers are removed (so calling this again, e.g.
    from tests, does not duplicate lines) and the per-request chatter of httpx, httpcore and
    hypercorn's access log is raised to WARNING (INFO at ``debug``). At ``debug`` the loggers of
    boto3, botocore, s3transfer and urllib3 stay at INFO (their DEBUG lines show the store's
    access key id and signatures) unless ``store_debug``. Returns the handler. Raises
    ValueError on an unknown ``level`` or ``fmt``.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected text or json")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # At debug, the request lines of httpx/hypercorn show; httpcore's wire trace never does.
    chatty = logging.INFO if level == "debug" else logging.WARNING
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
    secret = logging.INFO if level == "debug" and not store_debug else logging.NOTSET
    for name in _SECRET_LOGGERS:
        logging.getLogger(name).setLevel(secret)
    return handler


def record_fields(record: logging.LogRecord) -> tuple[str, dict[str, object]]:
    """Return the event name and the fields of ``record``, including ``error``/``traceback``."""
    fields = getattr(record, _FIELDS_ATTR, None)
    if isinstance(fields, dict):
        event = str(record.msg)
        out = {(f"{key}_" if key in _RESERVED else key): value for key, value in fields.items()}
    else:
        # A record from another library: its logger names the event, its text is the message.
        event = record.name
        out = {"message": record.getMessage()}
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out.setdefault("error", f"{type(exc).__name__}: {exc}")
        out["traceback"] = "".join(traceback.format_exception(exc)).rstrip("\n")
    return event, {key: _masked(value) for key, value in out.items()}


def _masked(value: object) -> object:
    """``value`` with the secrets of every URL in it masked; numbers, bools and None as they are,
    lists and mappings item by item, anything else as its (masked) ``str()``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return redact_text(str(value))


def format_time(created: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-21T10:00:00.123Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL event key=value key2="quoted value"``, logfmt quoting, one line."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = record_fields(record)
        parts = [format_time(record.created), record.levelname, _text_value(event)]
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``event``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = record_fields(record)
        line: dict[str, object] = {
            "time": format_time(record.created),
            "level": record.levelname,
            "event": event,
        }
        line.update(fields)
        return _one_line(json.dumps(line, ensure_ascii=False, default=str))


def _one_line(dumped: str) -> str:
    """``dumped`` (JSON text) with every character that is not printable escaped as JSON
    escapes it: json.dumps leaves NEL, U+2028/2029 (line breaks to ``splitlines`` and to
    journal readers), C1 controls (U+009B starts a terminal escape) and bidi overrides
    raw, which would let a value split or disguise a log line."""
    if dumped.isprintable():
        return dumped
    return "".join(ch if ch.isprintable() else json.dumps(ch)[1:-1] for ch in dumped)


def _text_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and not any(ch in text for ch in ' "=\\') and text.isprintable():
        return text
    # json.dumps quotes and escapes newlines, tabs and quotes; _one_line the rest that is
    # not printable: the value stays on one line.
    return _one_line(json.dumps(text, ensure_ascii=False))


class ExpectedErrors(logging.Filter):
    """Drops a server's traceback for a response that ended on purpose in one of ``types``.

    A failed upstream or cache write must break the client's connection (never a short 200),
    which the server reports as an application error with a traceback. The tracker has
    already logged that failure as one event line (``stream_failed``), so the traceback is
    noise for an operator; any other exception is kept.
    """

    def __init__(self, types: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.types = types

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) when the record's exception is, or only groups, expected errors."""
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not self._expected(exc)

    def _expected(self, exc: BaseException) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return all(self._expected(e) for e in exc.exceptions)
        return isinstance(exc, self.types)


#: The longest field value a :class:`RecentEvents` keeps (a reason, a URL).
MAX_RECENT_FIELD = 300


@attrs.frozen
class RecentEvent:
    """One kept event: when (Unix time), its level name, its name, its masked fields."""

    time: float
    level: str
    event: str
    fields: Mapping[str, str]


class RecentEvents(logging.Handler):
    """The last few events of chosen names, for the status page: a bounded ring per kind.

    ``kinds`` maps an event name to its kind (e.g. ``"archive_rejected" -> "rejected"``);
    each kind keeps its last ``size`` events, so a storm of one kind never pushes another
    out. Fields are masked as in every log line (:func:`record_fields`) and cut to
    :data:`MAX_RECENT_FIELD` characters. It sees what the log level lets through: attach it
    with ``logging.getLogger("tracker").addHandler``. Thread-safe: events may come from
    worker threads.
    """

    def __init__(self, kinds: Mapping[str, str], size: int = 20) -> None:
        super().__init__()
        self.kinds = dict(kinds)
        self._rings: dict[str, collections.deque[RecentEvent]] = {
            kind: collections.deque(maxlen=size) for kind in set(self.kinds.values())
        }

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` when its event is one of ``kinds`` (called under the lock)."""
        kind = self.kinds.get(str(record.msg))
        if kind is None or not isinstance(getattr(record, _FIELDS_ATTR, None), dict):
            return
        event, fields = record_fields(record)
        fields.pop("traceback", None)
        kept = {key: _cut(str(value)) for key, value in fields.items()}
        self._rings[kind].append(RecentEvent(record.created, record.levelname, event, kept))

    def recent(self, kind: str) -> list[RecentEvent]:
        """The kept events of ``kind``, newest first (empty for an unknown kind)."""
        with self.lock or contextlib.nullcontext():
            ring = self._rings.get(kind)
            return list(reversed(ring)) if ring is not None else []


def _cut(text: str) -> str:
    return text if len(text) <= MAX_RECENT_FIELD else text[: MAX_RECENT_FIELD - 1] + "…"
