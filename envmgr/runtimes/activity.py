"""What counts as activity, and when autopause pauses: pure rules, no I/O.

Activity is what a person or a kernel does: a cell run (an `execute_request` a client sends
on a kernel's channels), terminal input, a file saved through Jupyter, input in the page (the
JupyterLab extension reports keys, pointer and focus while its tab is visible), "I'm still
here", and a kernel that is busy. An open tab's polling (kernels, sessions, contents,
terminals, lab workspaces), status requests and listings are not: a tab left open is not a
person. Jupyter's own `last_activity` counts all of those, so autopause no longer reads it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Kind(StrEnum):
    CELL = "cell run"
    TERMINAL = "terminal input"
    SAVE = "file saved"
    PAGE = "page input"
    STILL_HERE = "still here"
    BUSY = "kernel busy"
    STARTED = "started"  # a status change (created, resumed): the clock starts there


_CONTENTS = re.compile(r"^api/contents(/|$)")
_KERNEL_CHANNELS = re.compile(r"^api/kernels/[^/]+/channels$")
_TERMINAL = re.compile(r"^terminals/websocket/[^/]+$")


def of_request(method: str, path: str) -> Kind | None:
    """An HTTP request through the proxy: only a write of a file's contents is activity
    (JupyterLab autosaves only a changed document, so an untouched tab sends none)."""
    return Kind.SAVE if method == "PUT" and _CONTENTS.match(path.lstrip("/")) else None


def _header_v1(frame: bytes) -> dict[str, object] | None:
    """The header of a message in Jupyter's v1 kernel websocket protocol (offsets, then
    channel, header, parent header, metadata, content, buffers)."""
    count = int.from_bytes(frame[:8], "little")
    if count < 3 or 8 * (count + 1) > len(frame):
        return None
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    if frame[offsets[0]:offsets[1]] != b"shell":
        return None
    header = json.loads(frame[offsets[1]:offsets[2]])
    return header if isinstance(header, dict) else None


def socket_of(path: str) -> str | None:
    """Which websocket a path is, once per connection: "kernel" (a kernel's channels),
    "terminal", or None (nothing sent on it is activity)."""
    path = path.lstrip("/")
    if _TERMINAL.match(path):
        return "terminal"
    return "kernel" if _KERNEL_CHANNELS.match(path) else None


def of_frame(path: str, frame: str | bytes) -> Kind | None:
    return in_frame(socket_of(path), frame)


def in_frame(socket: str | None, frame: str | bytes) -> Kind | None:
    """A websocket message a client sends to the runtime: an `execute_request` on a
    kernel's shell channel, or a terminal's `stdin`. Every keystroke of a terminal and
    every kernel message passes here, so nothing is copied, and a message is parsed only
    when the cheap test says it may be a run."""
    if socket == "terminal":
        head = frame[:16].lstrip()
        return Kind.TERMINAL if (head.startswith('["stdin"') if isinstance(head, str)
                                 else head.startswith(b'["stdin"')) else None
    if socket != "kernel" or ("execute_request" not in frame if isinstance(frame, str)
                              else b"execute_request" not in frame):
        return None
    try:
        if isinstance(frame, str):
            msg = json.loads(frame)
            header = msg.get("header") if msg.get("channel") == "shell" else None
        else:
            header = _header_v1(frame)
    except (ValueError, AttributeError, IndexError):
        return None
    return Kind.CELL if isinstance(header, dict) and \
        header.get("msg_type") == "execute_request" else None


@dataclass(frozen=True)
class Last:
    at: datetime
    kind: Kind


def latest(*seen: Last | None) -> Last:
    return max((s for s in seen if s is not None), key=lambda s: s.at)


@dataclass(frozen=True)
class Verdict:
    due: datetime  # when it pauses if nothing more happens
    reason: str  # the event's reason when it does


def verdict(last: Last, busy_since: datetime | None, minutes: float,
            max_busy_hours: float) -> Verdict:
    """A busy kernel keeps a runtime up, but never more than `max_busy_hours` past its last
    other activity (a wedged kernel must not burn money for days); else it pauses
    `minutes` after its last activity."""
    if busy_since is not None:
        return Verdict(last.at + timedelta(hours=max_busy_hours),
                       f"autopause: busy for {max_busy_hours:g} h")
    idle = timedelta(minutes=minutes)
    return Verdict(last.at + idle, f"autopause: idle {_minutes(idle)} since {last.kind.value}")


def _minutes(delta: timedelta) -> str:
    m = delta.total_seconds() / 60
    return f"{m:.0f} min" if m >= 1 else f"{m:.1f} min"


def kind_of(value: str | None) -> Kind:
    try:
        return Kind(value) if value else Kind.STARTED
    except ValueError:
        return Kind.STARTED
