"""The activity rules (envmgr.runtimes.activity), without a runtime: what a client sends that
is a person's or a kernel's doing, and when autopause pauses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

from envmgr.runtimes.activity import Kind, Last, kind_of, latest, of_frame, of_request, verdict

CHANNELS = "api/kernels/5d0e/channels"


def _msg(msg_type: str, channel: str = "shell", code: str = "1 + 1") -> dict[str, Any]:
    return {"header": {"msg_id": "m", "msg_type": msg_type, "session": "s", "username": "u",
                       "version": "5.3", "date": "2026-12-08T00:00:00Z"},
            "parent_header": {}, "metadata": {}, "channel": channel,
            "content": {"code": code, "silent": False}}


def _v1(msg: dict[str, Any]) -> bytes:
    """A frame as JupyterLab sends it (v1.kernel.websocket.jupyter.org), by Jupyter's own
    serializer."""
    return serialize_msg_to_ws_v1(msg, msg["channel"], lambda o: json.dumps(o).encode())


@pytest.mark.parametrize("encode", [json.dumps, _v1], ids=["json", "v1"])
def test_a_cell_run_is_an_execute_request_on_the_shell_channel(encode: Any) -> None:
    assert of_frame(CHANNELS, encode(_msg("execute_request"))) == Kind.CELL
    for other in ("kernel_info_request", "complete_request", "inspect_request",
                  "comm_info_request", "history_request", "is_complete_request"):
        assert of_frame(CHANNELS, encode(_msg(other))) is None, other
    # a completion of code that mentions it is not a run; nor is it on another channel
    assert of_frame(CHANNELS, encode(_msg("complete_request", code="execute_request"))) is None
    assert of_frame(CHANNELS, encode(_msg("execute_request", channel="control"))) is None
    assert of_frame("api/kernels/5d0e/channels/extra", encode(_msg("execute_request"))) is None


@pytest.mark.parametrize("frame", [b"execute_request", b"\xff" * 64, "execute_request{",
                                   b"\x09" + b"\x00" * 7 + b"execute_request",
                                   json.dumps(["execute_request"])])
def test_a_malformed_frame_is_not_activity_and_never_raises(frame: Any) -> None:
    assert of_frame(CHANNELS, frame) is None


def test_terminal_input_is_stdin_only() -> None:
    path = "terminals/websocket/1"
    assert of_frame(path, json.dumps(["stdin", "ls\r"])) == Kind.TERMINAL
    assert of_frame(path, json.dumps(["set_size", 24, 80, 400, 400])) is None
    assert of_frame("api/kernels/x/channels", json.dumps(["stdin", "ls"])) is None


def test_only_a_write_of_contents_is_activity_among_requests() -> None:
    assert of_request("PUT", "api/contents/work/a.ipynb") == Kind.SAVE
    for method, path in (("GET", "api/contents/work/a.ipynb"), ("GET", "api/kernels"),
                         ("GET", "api/sessions"), ("GET", "api/terminals"),
                         ("PUT", "lab/api/workspaces/default"), ("GET", "api/status"),
                         ("POST", "api/contents/a.ipynb/checkpoints"), ("GET", "envmgr/info")):
        assert of_request(method, path) is None, (method, path)


NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def test_idle_pauses_its_minutes_after_the_latest_activity_and_says_which() -> None:
    last = latest(Last(NOW - timedelta(hours=2), Kind.STARTED), None,
                  Last(NOW - timedelta(minutes=26), Kind.CELL))
    v = verdict(last, None, 30, 24)
    assert v.due == NOW + timedelta(minutes=4)
    assert v.reason == "autopause: idle 30 min since cell run"
    assert verdict(Last(NOW, Kind.PAGE), None, 0.5, 24).reason == \
        "autopause: idle 0.5 min since page input"


def test_a_busy_kernel_keeps_it_up_to_the_cap_past_the_last_other_activity() -> None:
    v = verdict(Last(NOW, Kind.CELL), NOW + timedelta(minutes=1), 30, 24)
    assert v.due == NOW + timedelta(hours=24) and v.reason == "autopause: busy for 24 h"


def test_an_unknown_kind_in_the_database_reads_as_a_status_change() -> None:
    assert kind_of(None) == Kind.STARTED and kind_of("teleport") == Kind.STARTED
    assert kind_of("cell run") == Kind.CELL
