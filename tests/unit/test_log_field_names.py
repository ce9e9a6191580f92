"""No event is logged with a field named like the line's own keys (``time``, ``level``,
``event``): the renderer would print it with a trailing underscore (``level_=manifest``),
which no operator can read as meant. Checked on the source, every ``log_event`` and
``log_folded`` call."""

from __future__ import annotations

import ast
from pathlib import Path

import tracker

ROOT = Path(tracker.__file__).parent
#: The keys every rendered line has of its own (tracker/observability/logs.py).
LINE_KEYS = frozenset({"time", "level", "event"})


def test_no_event_is_logged_with_a_field_named_like_the_lines_own_keys() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {keyword.arg}="
        for path in sorted(ROOT.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func).endswith(("log_event", "log_folded"))
        for keyword in node.keywords
        if keyword.arg in LINE_KEYS
    ]
    assert found == []


def test_the_check_sees_a_call_that_would_be_renamed() -> None:
    call = ast.parse("log_event(log, 'info', 'x', level='manifest')").body[0]
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
    assert [k.arg for k in call.value.keywords if k.arg in LINE_KEYS] == ["level"]
