"""The local backend's side of the fork server (`envmgr_jupyter.forkserver`): one per
runtime image, started on demand, found again after a control-plane restart (it outlives
the control plane, as runtimes do), started anew if it died. Every call here is blocking;
the backend runs them in a thread.

Its record (`forkserver.json`: pid, start time, interpreter, socket) sits in the backend's
private folder with its socket, which only root (the service) may enter."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from envmgr_jupyter.forkserver import read_message

log = logging.getLogger(__name__)


class ForkServerUnavailable(Exception):
    """The fork server cannot serve this start: start cold instead."""


class ForkServer:
    def __init__(self, folder: Path, interpreter: str, env: dict[str, str],
                 boot_seconds: float = 60.0) -> None:
        key = hashlib.sha256(interpreter.encode()).hexdigest()[:12]
        self.folder = folder
        self.interpreter = interpreter
        self.env = env
        self.boot_seconds = boot_seconds
        self.record = folder / f"forkserver-{key}.json"
        self.socket = folder / f"forkserver-{key}.sock"
        self.log = folder / f"forkserver-{key}.log"
        self._lock = threading.Lock()
        self.failed_at: float | None = None  # when it last could not start: retried later

    # -- finding it -------------------------------------------------------------------
    def _recorded(self) -> psutil.Process | None:
        try:
            info = json.loads(self.record.read_text())
            proc = psutil.Process(int(info["pid"]))
            if abs(proc.create_time() - float(info["create_time"])) > 0.5 or \
                    proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return None

    def pid(self) -> int | None:
        proc = self._recorded()
        return proc.pid if proc else None

    def call(self, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            # Through a handle on its folder: a socket's path may not pass 107 bytes.
            folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                s.connect(f"/proc/self/fd/{folder}/{self.socket.name}")
            finally:
                os.close(folder)
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = read_message(s)
        if not reply.get("ok"):
            raise ForkServerUnavailable(f"the fork server refused: {reply}")
        return reply

    def _answers(self) -> bool:
        try:
            self.call({"op": "ping"}, timeout=2.0)
            return True
        except (OSError, ValueError, ForkServerUnavailable):
            return False

    # -- starting it ------------------------------------------------------------------
    def ensure(self) -> None:
        """Running and answering, or ForkServerUnavailable (the start then goes cold)."""
        with self._lock:
            if self._recorded() and self._answers():
                return
            if self.failed_at is not None and time.monotonic() - self.failed_at < 30:
                raise ForkServerUnavailable("the fork server failed to start moments ago")
            self._start()

    def _start(self) -> None:
        old = self._recorded()
        if old:  # alive but not answering: replace it
            with contextlib.suppress(psutil.Error):
                old.kill()
        with self.log.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    [self.interpreter, "-m", "envmgr_jupyter.forkserver", str(self.socket)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.folder, env=self.env, start_new_session=True, umask=0o077)
            except OSError as exc:
                self.failed_at = time.monotonic()
                raise ForkServerUnavailable(f"the fork server cannot run: {exc}") from exc
        record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                  "interpreter": self.interpreter}
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.record)
        deadline = time.monotonic() + self.boot_seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self._answers():
                self.failed_at = None
                log.info("fork server started", extra={"pid": proc.pid})
                return
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait(5)
        self.failed_at = time.monotonic()
        tail = self.log.read_bytes()[-300:].decode(errors="replace").strip().splitlines()
        raise ForkServerUnavailable(f"the fork server did not start: {' | '.join(tail[-2:])}")

    def spawn(self, request: dict[str, Any]) -> int:
        self.ensure()
        try:
            return int(self.call({"op": "spawn", **request})["pid"])
        except (OSError, ValueError) as exc:
            raise ForkServerUnavailable(f"the fork server did not answer: {exc}") from exc

    def stop_if_idle(self) -> None:
        """End it if no runtime of its own lives (a helper that serves nothing ends with its
        control plane); one that does stays, to record how they end."""
        proc = self._recorded()
        with contextlib.suppress(psutil.Error):
            if proc is not None and not proc.children():
                self.stop()

    def stop(self) -> None:
        proc = self._recorded()
        if proc:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                proc.wait(5)
        self.record.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.unlink(self.socket)
