"""`python -m envmgr_runner.agent <control url> <folder> [--network none] [--user NAME]`: a
job's compute that is not the control plane's machine (a GCE VM). It fetches the notebook
from the control plane's job API, runs the runner in `folder` (as `--user`, in a network
namespace with only a loopback for `--network none`), and reports what the runner writes:
events as they come, then the outputs and the result. The job's token comes from the
environment (ENVMGR_JOB_TOKEN), never a command line, and is not passed to the notebook.
A 409 from the control plane means the job ended there (canceled, timed out): stop."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from envmgr_runner.files import open_own

OUTPUTS = (("output.ipynb", ".output.ipynb"), ("output.html", None), ("log.txt", ".log.txt"))


class Ended(Exception):
    """The control plane says the job is over."""


class Agent:
    def __init__(self, control_url: str, folder: Path, token: str, network: str,
                 user: str | None, poll: float = 0.5) -> None:
        self.folder, self.network, self.user, self.poll = folder, network, user, poll
        self.http = httpx.Client(base_url=control_url.rstrip("/") + "/job-api/v1",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.offset = 0

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(8):  # the control plane restarting is no reason to give up
            try:
                r = self.http.request(method, path, **kw)
            except httpx.HTTPError:
                time.sleep(min(2 ** attempt, 30))
                continue
            if r.status_code in (401, 409):
                raise Ended(r.text)
            if r.status_code < 500:
                r.raise_for_status()
                return r
            time.sleep(min(2 ** attempt, 30))
        raise Ended("the control plane did not answer")

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "envmgr_runner", str(self.folder)]
        if self.user and os.geteuid() == 0:
            u = pwd.getpwnam(self.user)
            for p in [self.folder, *self.folder.rglob("*")]:
                os.chown(p, u.pw_uid, u.pw_gid)
            cmd = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
                   "--", *cmd]
        if self.network == "none":
            ns = ["unshare", "--net"] if os.geteuid() == 0 else \
                ["unshare", "--user", "--map-root-user", "--net"]
            cmd = [*ns, "--", "/bin/sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
        return cmd

    def open_own(self, name: str) -> int | None:
        """A file the runner wrote, only if it is the job user's own (the agent is root)."""
        owner = pwd.getpwnam(self.user).pw_uid if self.user and os.geteuid() == 0 \
            else os.geteuid()
        return open_own(self.folder / name, owner)

    def read_own(self, name: str) -> bytes | None:
        fd = self.open_own(name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def new_events(self) -> list[dict[str, Any]]:
        path = self.folder / "events.jsonl"
        fd = self.open_own(path.name)
        if fd is None:
            return []
        with os.fdopen(fd, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(1 << 20)
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in chunk[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def run(self) -> int:
        shutil.rmtree(self.folder, ignore_errors=True)
        (self.folder / "work").mkdir(parents=True)
        for name in ("input.ipynb", "job.json"):
            (self.folder / name).write_bytes(self.call("GET", f"/inputs/{name}").content)
        env = {k: v for k, v in os.environ.items() if k != "ENVMGR_JOB_TOKEN"}
        proc = subprocess.Popen(self.command(), cwd=self.folder / "work", env=env,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                self.call("POST", "/report", json={"events": self.new_events()})
                time.sleep(self.poll)
            for name, partial in OUTPUTS:
                for candidate in (name, partial):
                    data = self.read_own(candidate) if candidate else None
                    if data is not None:
                        self.call("PUT", f"/outputs/{name}", content=data)
                        break
            raw = self.read_own("result.json")
            try:
                found = json.loads(raw) if raw is not None else None
            except ValueError:
                found = None
            result = found if isinstance(found, dict) else {
                "status": "failed", "error": {
                    "kind": "infrastructure",
                    "message": f"the runner exited with {proc.returncode} without a result"}}
            self.call("POST", "/report", json={"events": self.new_events(), "result": result})
        except Ended:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            return 3
        return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="envmgr_runner.agent")
    p.add_argument("control_url")
    p.add_argument("folder", type=Path)
    p.add_argument("--network", default="default", choices=["default", "none"])
    p.add_argument("--user", default=None)
    p.add_argument("--poll", type=float, default=0.5)
    args = p.parse_args(argv)
    token = os.environ.get("ENVMGR_JOB_TOKEN", "")
    if not token:
        print("ENVMGR_JOB_TOKEN is not set", file=sys.stderr)
        return 2
    return Agent(args.control_url, args.folder, token, args.network, args.user,
                 args.poll).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
