"""A fake Compute Engine REST API: the subset envmgr's gce backend uses, in GCE's wire format.

Zone operations go PENDING -> RUNNING -> DONE over time and apply their effect when done;
instances and disks carry realistic fields; errors are shaped like GCE's. `requestId`
dedupes mutations as GCE does. Switches inject faults: a share of calls answering 429/500
before acting, "lost responses" (the call acts, then answers 500), slow operations, and
capacity errors on instance inserts. `calls` records every request."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BASE = "/compute/v1/projects/{project}/zones/{zone}"


@dataclass
class Faults:
    error_rate: float = 0.0  # share of calls answering 429 or 500 before doing anything
    lost_rate: float = 0.0  # share of mutations that act, then answer 500
    op_seconds: float = 0.05  # how long an operation takes
    slow_rate: float = 0.0  # share of operations that take slow_seconds instead
    slow_seconds: float = 1.0
    capacity: bool = False  # instance inserts end in ZONE_RESOURCE_POOL_EXHAUSTED


@dataclass
class FakeCompute:
    faults: Faults = field(default_factory=Faults)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    _requests: dict[str, str] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: Any = field(default_factory=lambda: itertools.count(1000))
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    # -- the world moving ------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        for op in self.ops.values():
            if op["status"] != "DONE" and now >= op["_done_at"]:
                op["status"], op["progress"] = "DONE", 100
                op["endTime"] = _stamp()
                op["_effect"](op)
            elif op["status"] == "PENDING" and now >= op["_start_at"]:
                op["status"] = "RUNNING"

    def _op(self, project: str, zone: str, kind: str, target: str, effect: Any,
            request_id: str | None) -> dict[str, Any]:
        if request_id and request_id in self._requests:
            return self.ops[self._requests[request_id]]  # the same request: the same op
        took = self.faults.slow_seconds if self.rng.random() < self.faults.slow_rate \
            else self.faults.op_seconds
        name = f"operation-{next(self._ids)}-{kind}"
        now = time.monotonic()
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name,
              "zone": f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}",
              "operationType": kind, "targetLink": target, "status": "PENDING",
              "progress": 0, "insertTime": _stamp(), "startTime": _stamp(),
              "selfLink": f"{target.rsplit('/', 2)[0]}/operations/{name}",
              "_start_at": now + took / 3, "_done_at": now + took, "_effect": effect}
        self.ops[name] = op
        if request_id:
            self._requests[request_id] = name
        return op

    @staticmethod
    def _fail(op: dict[str, Any], code: str, message: str, http: int = 503) -> None:
        op["error"] = {"errors": [{"code": code, "message": message}]}
        op["httpErrorStatusCode"], op["httpErrorMessage"] = http, "SERVICE UNAVAILABLE"

    # -- HTTP --------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route(f"{BASE}/instances", self.instances_list_insert, methods=["GET", "POST"]),
            Route(BASE + "/instances/{name}", self.instance_get_delete,
                  methods=["GET", "DELETE"]),
            Route(BASE + "/instances/{name}/{verb}", self.instance_verb, methods=["POST"]),
            Route(f"{BASE}/disks", self.disk_insert, methods=["POST"]),
            Route(BASE + "/disks/{name}", self.disk_get_delete, methods=["GET", "DELETE"]),
            Route(BASE + "/operations", self.op_list, methods=["GET"]),
            Route(BASE + "/operations/{name}", self.op_get, methods=["GET"]),
            Route(BASE + "/operations/{name}/wait", self.op_get, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _enter(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        body = {}
        if request.method == "POST":
            raw = await request.body()
            body = json.loads(raw) if raw else {}
        with self._lock:
            self.calls.append((request.method, request.url.path, {
                **dict(request.query_params), **({"body": body} if body else {})}))
            self._tick()
            if self.rng.random() < self.faults.error_rate:
                code = self.rng.choice([429, 500])
                return body, _error(code, "RESOURCE_EXHAUSTED" if code == 429 else "INTERNAL",
                                    "rateLimitExceeded" if code == 429 else "backendError",
                                    "Rate Limit Exceeded" if code == 429 else "Internal error")
        return body, None

    def _answer(self, op: dict[str, Any], request: Request) -> JSONResponse:
        if request.method != "GET" and self.rng.random() < self.faults.lost_rate:
            return _error(500, "INTERNAL", "backendError", "Internal error (response lost)")
        return JSONResponse({k: v for k, v in op.items() if not k.startswith("_")})

    async def op_get(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        op = self.ops.get(request.path_params["name"])
        if op is None:
            return _error(404, "NOT_FOUND", "notFound", "The resource was not found")
        return JSONResponse({k: v for k, v in op.items() if not k.startswith("_")})

    async def op_list(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        return err or JSONResponse({"kind": "compute#operationList", "items": []})

    async def instances_list_insert(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        p, z = request.path_params["project"], request.path_params["zone"]
        with self._lock:
            if request.method == "GET":
                items = [_public(i) for i in self.instances.values()]
                return JSONResponse({"kind": "compute#instanceList", "items": items})
            name = body["name"]
            link = f"https://www.googleapis.com/compute/v1/projects/{p}/zones/{z}/instances/{name}"
            rid = request.query_params.get("requestId")
            if rid not in self._requests and name in self.instances:
                return _error(409, "ALREADY_EXISTS", "alreadyExists",
                              f"The resource '{link}' already exists")
            for d in body.get("disks", []):
                src = d.get("source", "")
                if src and src.rsplit("/", 1)[-1] not in self.disks:
                    return _error(400, "INVALID_ARGUMENT", "invalid", f"disk {src} not found")

            def effect(op: dict[str, Any]) -> None:
                if self.faults.capacity:
                    self._fail(op, "ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have "
                               "enough resources available to fulfill the request.")
                    self.instances.pop(name, None)
                    return
                self.instances[name]["status"] = "RUNNING"
            if rid not in self._requests:
                self.instances[name] = {
                    "kind": "compute#instance", "id": str(next(self._ids)), "name": name,
                    "selfLink": link, "status": "PROVISIONING", "zone": z,
                    "machineType": body.get("machineType", ""), "labels": body.get("labels", {}),
                    "disks": [{**d, "deviceName": d.get("deviceName", ""),
                               "autoDelete": d.get("autoDelete", False)}
                              for d in body.get("disks", [])],
                    # Loopback: the control plane calls runtimes (flush, probes), and tests
                    # send nothing beyond this machine.
                    "networkInterfaces": [{"network": "default", "networkIP": "127.0.0.1"}],
                    "metadata": body.get("metadata", {}),
                    "serviceAccounts": body.get("serviceAccounts", []),
                    "tags": body.get("tags", {}), "scheduling": body.get("scheduling", {}),
                    "creationTimestamp": _stamp()}
            return self._answer(self._op(p, z, "insert", link, effect, rid), request)

    async def instance_get_delete(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        p, z, name = (request.path_params[k] for k in ("project", "zone", "name"))
        with self._lock:
            inst = self.instances.get(name)
            rid = request.query_params.get("requestId")
            if inst is None and rid not in self._requests:
                return _error(404, "NOT_FOUND", "notFound",
                              f"The resource 'projects/{p}/zones/{z}/instances/{name}' "
                              "was not found")
            if request.method == "GET":
                return JSONResponse(_public(inst))

            def effect(op: dict[str, Any]) -> None:
                gone = self.instances.pop(name, None)
                for d in (gone or {}).get("disks", []):
                    if d.get("autoDelete") and d.get("source"):
                        self.disks.pop(d["source"].rsplit("/", 1)[-1], None)
            if inst is not None:
                inst["status"] = "STOPPING"
            return self._answer(self._op(p, z, "delete", inst["selfLink"] if inst else name,
                                         effect, rid), request)

    async def instance_verb(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        p, z, name, verb = (request.path_params[k] for k in ("project", "zone", "name", "verb"))
        with self._lock:
            inst = self.instances.get(name)
            rid = request.query_params.get("requestId")
            if inst is None:
                return _error(404, "NOT_FOUND", "notFound", f"instance {name} was not found")
            if rid in self._requests:
                return self._answer(self.ops[self._requests[rid]], request)
            if verb == "stop":
                inst["status"] = "STOPPING"

                def effect(op: dict[str, Any]) -> None:
                    inst["status"] = "TERMINATED"
            elif verb == "start":
                if inst["status"] != "TERMINATED":
                    return _error(400, "FAILED_PRECONDITION", "resourceNotReady",
                                  f"instance {name} is {inst['status']}")
                inst["status"] = "STAGING"

                def effect(op: dict[str, Any]) -> None:
                    inst["status"] = "RUNNING"
            elif verb == "detachDisk":
                device = request.query_params.get("deviceName")

                def effect(op: dict[str, Any]) -> None:
                    inst["disks"] = [d for d in inst["disks"] if d.get("deviceName") != device]
            elif verb == "attachDisk":
                def effect(op: dict[str, Any]) -> None:
                    inst["disks"].append({**body, "autoDelete": body.get("autoDelete", False)})
            elif verb == "setMachineType":
                if inst["status"] != "TERMINATED":
                    return _error(400, "FAILED_PRECONDITION", "resourceNotReady",
                                  "the instance must be stopped to change its machine type")

                def effect(op: dict[str, Any]) -> None:
                    inst["machineType"] = body["machineType"]
            else:
                return _error(400, "INVALID_ARGUMENT", "invalid", f"unknown verb {verb}")
            return self._answer(self._op(p, z, verb, inst["selfLink"], effect, rid), request)

    async def disk_insert(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        p, z = request.path_params["project"], request.path_params["zone"]
        with self._lock:
            name = body["name"]
            rid = request.query_params.get("requestId")
            link = f"https://www.googleapis.com/compute/v1/projects/{p}/zones/{z}/disks/{name}"
            if rid not in self._requests:
                if name in self.disks:
                    return _error(409, "ALREADY_EXISTS", "alreadyExists", f"{link} exists")
                self.disks[name] = {"kind": "compute#disk", "id": str(next(self._ids)),
                                    "name": name, "sizeGb": str(body.get("sizeGb", "10")),
                                    "type": body.get("type", ""), "status": "CREATING",
                                    "labels": body.get("labels", {}), "selfLink": link,
                                    "creationTimestamp": _stamp()}

            def effect(op: dict[str, Any]) -> None:
                if name in self.disks:
                    self.disks[name]["status"] = "READY"
            return self._answer(self._op(p, z, "insert", link, effect, rid), request)

    async def disk_get_delete(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        p, z, name = (request.path_params[k] for k in ("project", "zone", "name"))
        with self._lock:
            disk = self.disks.get(name)
            rid = request.query_params.get("requestId")
            if disk is None and rid not in self._requests:
                return _error(404, "NOT_FOUND", "notFound", f"disk {name} was not found")
            if request.method == "GET":
                return JSONResponse(disk)

            def effect(op: dict[str, Any]) -> None:
                self.disks.pop(name, None)
            return self._answer(self._op(p, z, "delete", disk["selfLink"] if disk else name,
                                         effect, rid), request)


def _public(inst: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inst.items() if not k.startswith("_")}


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


def _error(code: int, status: str, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status,
                                   "errors": [{"message": message, "domain": "global",
                                               "reason": reason}]}}, status_code=code)


class FakeComputeServer:
    """The fake on a real HTTP server on loopback, in a thread."""

    def __init__(self, port: int) -> None:
        self.fake = FakeCompute()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.fake.app(), host="127.0.0.1",
                                                    port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake compute did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
