"""Kernels whose channels are Unix sockets, not TCP ports.

A kernel's five ZMQ channels normally listen on the machine's loopback, where any local
process can connect: IOPub needs no key to subscribe, so another user's kernel could read
every output as it came. With ZMQ's `ipc` transport the channels are socket files in a
folder of the runtime's (or job's) user alone (`ENVMGR_KERNEL_IPC_DIR`, made by the
backend): no other uid can connect. The prefix is short and per kernel (a socket's path may
not pass 107 bytes, and two kernels starting at once must not pick the same files)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from traitlets import default

ENV = "ENVMGR_KERNEL_IPC_DIR"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def with_ipc_channels(base: type) -> Any:
    """`base` (a jupyter_client KernelManager class) on the ipc transport."""

    class IpcChannels(base):  # type: ignore[misc]
        @default("transport")
        def _ipc_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _ipc_prefix(self) -> str:
            return os.path.join(os.environ[ENV], uuid.uuid4().hex[:12])

    IpcChannels.__name__ = IpcChannels.__qualname__ = f"Ipc{base.__name__}"
    return IpcChannels
