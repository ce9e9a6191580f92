"""Structured log lines: text and JSON formats, fields, exceptions, foreign records."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel

from tracker.observability.logs import (
    MAX_RECENT_FIELD,
    RecentEvents,
    format_time,
    log_event,
    setup_logging,
)

TIME_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def restore_root() -> Iterator[None]:
    """setup_logging configures the root logger: put pytest's state back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("httpx", "httpcore", "hypercorn.access", "botocore", "boto3", "s3transfer", "urllib3")
    chatty = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


def capture(fmt: str, level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream)  # type: ignore[arg-type]
    return stream


@pytest.mark.usefixtures("restore_root")
def test_text_line_has_time_level_event_and_logfmt_fields() -> None:
    stream = capture("text")
    log = logging.getLogger("tracker.test")
    log_event(log, "info", "scrape_done", group="mainnet", took=0.25, ok=True, note="two words")
    line = stream.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert re.fullmatch(
        TIME_RE + r' INFO scrape_done group=mainnet took=0\.25 ok=true note="two words"\n', line
    )


@pytest.mark.usefixtures("restore_root")
def test_text_quotes_and_escapes_values_so_they_stay_on_one_line() -> None:
    stream = capture("text")
    log = logging.getLogger("tracker.test")
    log_event(log, "warning", "odd", empty="", eq="a=b", nl="x\ny", q='say "hi"', none=None)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.split(" ", 2)[2] == (
        'odd empty="" eq="a=b" nl="x\\ny" q="say \\"hi\\"" none=null\n'
    )


#: What json.dumps leaves raw and a reader takes for a line break or a terminal's control:
#: NEL, LINE and PARAGRAPH SEPARATOR, the one-character CSI, a right-to-left override, DEL.
UNPRINTABLE = "a\x85b\u2028c\u2029d\x9b31me\u202eg\x7fh"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("restore_root")
def test_characters_that_are_not_printable_are_escaped(fmt: str) -> None:
    stream = capture(fmt)
    log_event(logging.getLogger("tracker.test"), "warning", "odd", reason=UNPRINTABLE, ok="é")
    line = stream.getvalue()
    assert line.endswith("\n")
    assert line[:-1].isprintable()
    assert len(line.splitlines()) == 1
    if fmt == "json":
        assert json.loads(line)["reason"] == UNPRINTABLE
        assert json.loads(line)["ok"] == "é"  # printable text stays as it is
    else:
        value = line.split(" reason=", 1)[1].split(" ok=")[0]
        assert json.loads(value) == UNPRINTABLE
        assert line.endswith(" ok=é\n")


@pytest.mark.usefixtures("restore_root")
def test_json_line_is_one_object_with_time_level_event_and_fields() -> None:
    stream = capture("json")
    log = logging.getLogger("tracker.test")
    log_event(log, "error", "reload_refused", problems=["a: bad", "b: bad"], count=2, path=None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert re.fullmatch(TIME_RE, obj.pop("time"))
    assert obj == {
        "level": "ERROR",
        "event": "reload_refused",
        "problems": ["a: bad", "b: bad"],
        "count": 2,
        "path": None,
    }


@pytest.mark.usefixtures("restore_root")
def test_fields_named_like_the_fixed_keys_do_not_overwrite_them() -> None:
    stream = capture("json")
    log_event(logging.getLogger("tracker.test"), "info", "evt", level="x", time="y")
    obj = json.loads(stream.getvalue())
    assert (obj["level"], obj["event"], obj["level_"], obj["time_"]) == ("INFO", "evt", "x", "y")


@pytest.mark.usefixtures("restore_root")
def test_values_json_cannot_encode_are_rendered_with_str() -> None:
    stream = capture("json")
    log_event(logging.getLogger("tracker.test"), "info", "evt", value={1, 2} - {2})
    assert json.loads(stream.getvalue())["value"] == "{1}"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("restore_root")
def test_exception_is_one_line_with_error_and_traceback(fmt: str) -> None:
    stream = capture(fmt)
    log = logging.getLogger("tracker.test")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        log_event(log, "error", "crashed", exc_info=exc, group="g")
    out = stream.getvalue()
    assert out.count("\n") == 1
    if fmt == "json":
        obj = json.loads(out)
        assert obj["error"] == "ValueError: boom\nsecond line"
        assert obj["traceback"].startswith("Traceback (most recent call last):")
        assert obj["group"] == "g"
    else:
        assert ' error="ValueError: boom\\nsecond line" ' in out
        assert ' traceback="Traceback (most recent call last):\\n' in out


@pytest.mark.usefixtures("restore_root")
def test_explicit_error_field_wins_over_the_exception_summary() -> None:
    stream = capture("json")
    try:
        raise OSError("disk full")
    except OSError:
        log_event(logging.getLogger("tracker.t"), "error", "x", exc_info=True, error="no space")
    obj = json.loads(stream.getvalue())
    assert obj["error"] == "no space"
    assert "OSError: disk full" in obj["traceback"]


@pytest.mark.usefixtures("restore_root")
def test_records_of_other_libraries_get_the_logger_name_as_event() -> None:
    stream = capture("text")
    logging.getLogger("hypercorn.error").info("Running on %s (CTRL + C to quit)", "http://x")
    assert stream.getvalue().split(" ", 1)[1] == (
        'INFO hypercorn.error message="Running on http://x (CTRL + C to quit)"\n'
    )


@pytest.mark.usefixtures("restore_root")
def test_level_filters_and_chatty_libraries_are_quieted() -> None:
    stream = capture("text", "warning")
    log = logging.getLogger("tracker.test")
    log_event(log, "info", "hidden")
    log_event(log, logging.WARNING, "shown")
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == ["shown"]

    stream = capture("text", "info")
    logging.getLogger("httpx").info("HTTP Request: GET http://x 200")
    assert stream.getvalue() == ""
    stream = capture("text", "debug")
    logging.getLogger("httpx").info("HTTP Request: GET http://x 200")
    assert "HTTP Request" in stream.getvalue()


@pytest.mark.usefixtures("restore_root")
def test_setup_twice_replaces_the_handler_instead_of_doubling_lines() -> None:
    capture("text")
    stream = capture("json")
    log_event(logging.getLogger("tracker.test"), "info", "once")
    assert len(stream.getvalue().splitlines()) == 1
    assert len(logging.getLogger().handlers) == 1


def test_unknown_level_or_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="log level"):
        setup_logging("verbose", "text", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml", io.StringIO())  # type: ignore[arg-type]


def test_format_time_is_rfc3339_utc_with_milliseconds() -> None:
    assert format_time(1795255200.1234) == "2026-11-21T10:00:00.123Z"


async def _a_cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled`` (trio makes them only inside a cancelled scope)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("a cancelled scope's checkpoint raised nothing")


def test_expected_errors_drop_only_their_tracebacks() -> None:
    import sys

    from tracker.errors import TrackerError, UpstreamError
    from tracker.observability.logs import ExpectedErrors

    keep = ExpectedErrors((TrackerError,))

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord("hypercorn.error", logging.ERROR, "", 0, "Error", (), info)

    assert not keep.filter(record(UpstreamError("upstream broke")))
    assert not keep.filter(record(ExceptionGroup("g", [UpstreamError("x")])))
    assert keep.filter(record(ExceptionGroup("g", [UpstreamError("x"), KeyError("bug")])))
    assert keep.filter(record(RuntimeError("a bug")))
    stopping = ExpectedErrors((TrackerError, trio.Cancelled))
    cancelled = trio.run(_a_cancelled)
    assert not stopping.filter(record(BaseExceptionGroup("g", [cancelled, UpstreamError("x")])))
    plain = logging.LogRecord("hypercorn.error", logging.INFO, "", 0, "Running", (), None)
    assert keep.filter(plain)


@pytest.fixture
def ring() -> Iterator[RecentEvents]:
    """A ring of recent events attached to the tracker's loggers, as the service does."""
    events = RecentEvents({"archive_rejected": "rejected", "upstream_failed": "failover"}, size=3)
    parent = logging.getLogger("tracker")
    parent.addHandler(events)
    old = parent.level
    parent.setLevel(logging.INFO)
    yield events
    parent.removeHandler(events)
    parent.setLevel(old)


def test_recent_events_keep_the_chosen_events_newest_first_and_bounded(
    ring: RecentEvents,
) -> None:
    log = logging.getLogger("tracker.proxy")
    log_event(log, "warning", "archive_rejected", group="g", file="a", source="s", reason="r")
    for n in range(5):
        log_event(log, "warning", "upstream_failed", url=f"http://h/{n}", reason="refused")
    log_event(log, "warning", "stream_failed", reason="not one of them")
    logging.getLogger("httpx").warning("a foreign record named like nothing we keep")
    [rejected] = ring.recent("rejected")
    assert (rejected.event, rejected.level) == ("archive_rejected", "WARNING")
    assert rejected.fields == {"group": "g", "file": "a", "source": "s", "reason": "r"}
    # Each kind keeps its last `size`: failovers do not push rejections out.
    assert [e.fields["url"] for e in ring.recent("failover")] == [
        f"http://h/{n}" for n in (4, 3, 2)
    ]
    assert ring.recent("nothing") == []


def test_recent_events_mask_urls_drop_tracebacks_and_cut_long_fields(ring: RecentEvents) -> None:
    log = logging.getLogger("tracker.proxy")
    try:
        raise OSError("connection to http://user:pw@h:1/?key=K refused")
    except OSError as exc:
        log_event(
            log, "warning", "upstream_failed", url="http://user:pw@h:1/p?key=K", reason="x" * 1000,
            exc_info=exc,
        )  # fmt: skip
    [event] = ring.recent("failover")
    assert event.fields["url"] == "http://***@h:1/p?***"
    assert "pw" not in event.fields["error"] and "traceback" not in event.fields
    assert len(event.fields["reason"]) == MAX_RECENT_FIELD


def test_recent_events_see_what_the_log_level_lets_through(ring: RecentEvents) -> None:
    logging.getLogger("tracker").setLevel(logging.ERROR)
    log_event(logging.getLogger("tracker.proxy"), "warning", "upstream_failed", url="u")
    assert ring.recent("failover") == []


async def test_recent_events_from_worker_threads(ring: RecentEvents) -> None:
    log = logging.getLogger("tracker.cache")

    def many() -> None:
        for n in range(200):
            log_event(log, "warning", "upstream_failed", url=f"http://h/{n}")

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(trio.to_thread.run_sync, many)
        for _ in range(50):
            assert len(ring.recent("failover")) <= 3
            await trio.lowlevel.checkpoint()
    assert len(ring.recent("failover")) == 3


@pytest.mark.usefixtures("restore_root")
def test_debug_keeps_the_store_libraries_at_info_unless_asked() -> None:
    """botocore's DEBUG lines carry the access key id and signatures."""
    capture("text", "debug")
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("urllib3").getEffectiveLevel() == logging.INFO
    setup_logging("debug", "text", io.StringIO(), store_debug=True)
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.DEBUG
    capture("text", "warning")
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
