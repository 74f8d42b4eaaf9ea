"""A fake Compute Engine REST API: the subset envmgr's gce backend uses, in GCE's wire
format, refusing what GCE refuses.

Every request is first checked against Compute Engine's discovery document
(tests/fakes/discovery.py: method, required parameters, unknown parameters and fields,
types); then the documented rules: resource names (RFC 1035, 1-63 characters), labels (at
most 64; keys start with a lowercase letter, keys and values at most 63 of `[a-z0-9_-]`),
machine types that exist in the zone, a disk attached to another instance
(`resourceInUseByAnotherResource`), deleting an attached disk, project and zone scoping
(another zone is another namespace; an unknown zone or project is refused), list
`filter` (the `labels.KEY:*`, `name = "..."` and `status = ...` forms) and paging
(`maxResults`, `pageToken`), suspend/resume and the SUSPENDED state, REPAIRING, quota
errors as a synchronous 403 and as operation errors, stockouts on start.

Zone operations go PENDING -> RUNNING -> DONE over time and apply their effect when done;
`requestId` dedupes mutations as GCE does. Switches inject faults: a share of calls
answering 429/500 before acting, "lost responses" (the call acts, then answers 500), slow
operations, capacity errors on inserts, quota refusals, stockouts on start. `calls`
records every request; `violations` every request the discovery document refuses."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.discovery import check

BASE = "/compute/v1/projects/{project}/zones/{zone}"
API = "https://www.googleapis.com/compute/v1"
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
ZONES = {"us-central1-a", "us-central1-b", "europe-west1-b"}
MACHINE_TYPES = {f"{family}-{kind}-{n}" for family in ("e2", "n2", "n2d", "c3")
                 for kind in ("standard", "highmem", "highcpu") for n in (2, 4, 8, 16, 32)} \
    | {"e2-micro", "e2-small", "e2-medium"}
DISK_TYPES = {"pd-standard", "pd-balanced", "pd-ssd"}


# How long GCE's operations take, in seconds (low, high), for `Faults(latency=GCE)`: insert
# and start as Google's published figures put them (a VM RUNNING 25-40 s after an insert,
# 15-20 s after a start). Google publishes no figure for suspend and resume; resume is
# modelled as a memory restore (a start without the boot), suspend as writing that memory.
GCE_LATENCY: dict[str, tuple[float, float]] = {
    "insert": (25, 40), "start": (15, 20), "resume": (8, 12), "suspend": (15, 30),
    "stop": (10, 20), "delete": (15, 25), "attachDisk": (2, 4), "detachDisk": (2, 4),
    "setLabels": (0.5, 1), "setMetadata": (0.5, 1), "setDiskAutoDelete": (0.5, 1),
    "setMachineType": (1, 2),
}
# Machine types that cannot be suspended (GPUs attached, or more than 208 GB of memory).
NOT_SUSPENDABLE = re.compile(r"(a2|a3|g2|m1|m2|m3)-.*")


@dataclass
class Faults:
    error_rate: float = 0.0  # share of calls answering 429 or 500 before doing anything
    lost_rate: float = 0.0  # share of mutations that act, then answer 500
    op_seconds: float = 0.05  # how long an operation takes (unless `latency` names it)
    latency: dict[str, tuple[float, float]] = field(default_factory=dict)
    slow_rate: float = 0.0  # share of operations that take slow_seconds instead
    slow_seconds: float = 1.0
    capacity: bool = False  # instance inserts end in ZONE_RESOURCE_POOL_EXHAUSTED
    quota_sync: bool = False  # instance inserts answer 403 QUOTA_EXCEEDED at once
    quota_op: bool = False  # instance inserts end in a QUOTA_EXCEEDED operation error
    stockout_on_start: bool = False  # start/resume end in ZONE_RESOURCE_POOL_EXHAUSTED


class Refused(Exception):
    def __init__(self, code: int, status: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.answer = _error(code, status, reason, message)


@dataclass
class Zone:
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FakeCompute:
    project: str = "proj"
    zone: str = "us-central1-a"
    faults: Faults = field(default_factory=Faults)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    world: dict[tuple[str, str], Zone] = field(default_factory=dict)
    _requests: dict[str, str] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: Any = field(default_factory=lambda: itertools.count(1000))
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    # The default project and zone, as tests look at them.
    @property
    def instances(self) -> dict[str, dict[str, Any]]:
        return self._zone(self.project, self.zone).instances

    @property
    def disks(self) -> dict[str, dict[str, Any]]:
        return self._zone(self.project, self.zone).disks

    def _zone(self, project: str, zone: str) -> Zone:
        return self.world.setdefault((project, zone), Zone())

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
            else self.rng.uniform(*self.faults.latency[kind]) if kind in self.faults.latency \
            else self.faults.op_seconds
        name = f"operation-{next(self._ids)}-{kind.lower()}"  # as GCE names them: lowercase
        now = time.monotonic()
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name,
              "zone": f"{API}/projects/{project}/zones/{zone}",
              "operationType": kind, "targetLink": target, "status": "PENDING",
              "progress": 0, "insertTime": _stamp(), "startTime": _stamp(),
              "selfLink": f"{API}/projects/{project}/zones/{zone}/operations/{name}",
              "_start_at": now + took / 3, "_done_at": now + took, "_effect": effect}
        self.ops[name] = op
        if request_id:
            self._requests[request_id] = name
        return op

    @staticmethod
    def _fail(op: dict[str, Any], code: str, message: str, http: int = 503) -> None:
        op["error"] = {"errors": [{"code": code, "message": message}]}
        op["httpErrorStatusCode"] = http
        op["httpErrorMessage"] = "FORBIDDEN" if http == 403 else "SERVICE UNAVAILABLE"

    # -- HTTP --------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route(f"{BASE}/instances", self.instances_list_insert, methods=["GET", "POST"]),
            Route(BASE + "/instances/{name}", self.instance_get_delete,
                  methods=["GET", "DELETE"]),
            Route(BASE + "/instances/{name}/{verb}", self.instance_verb, methods=["POST"]),
            Route(f"{BASE}/disks", self.disk_list_insert, methods=["GET", "POST"]),
            Route(BASE + "/disks/{name}", self.disk_get_delete, methods=["GET", "DELETE"]),
            Route(BASE + "/operations", self.op_list, methods=["GET"]),
            Route(BASE + "/operations/{name}", self.op_get, methods=["GET"]),
            Route(BASE + "/operations/{name}/wait", self.op_get, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _enter(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        body: Any = {}
        if request.method in ("POST", "PUT", "PATCH"):
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return {}, _error(400, "INVALID_ARGUMENT", "parseError", "Parse Error")
        query = dict(request.query_params)
        with self._lock:
            self.calls.append((request.method, request.url.path,
                               {**query, **({"body": body} if body else {})}))
            problems = check(request.method, request.url.path, query, body)
            if problems:
                self.violations += problems
                return body, _error(400, "INVALID_ARGUMENT", "invalid", "; ".join(problems))
            p, z = request.path_params["project"], request.path_params["zone"]
            if p != self.project:
                return body, _error(404, "NOT_FOUND", "notFound",
                                    f"The resource 'projects/{p}' was not found")
            if z not in ZONES:
                return body, _error(400, "INVALID_ARGUMENT", "invalid",
                                    f"Invalid value for field 'zone': '{z}'. Unknown zone.")
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
        return JSONResponse(_public(op))

    async def op_get(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        op = self.ops.get(request.path_params["name"])
        if op is None or not op["zone"].endswith(f"/zones/{request.path_params['zone']}"):
            return _error(404, "NOT_FOUND", "notFound", "The resource was not found")
        return JSONResponse(_public(op))

    async def op_list(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        return err or JSONResponse({"kind": "compute#operationList", "items": []})

    # -- rules ---------------------------------------------------------------------------
    @staticmethod
    def _name(kind: str, name: Any) -> None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise Refused(400, "INVALID_ARGUMENT", "invalid",
                          f"Invalid value for field 'resource.name': '{name}'. Must be a "
                          "match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")

    @staticmethod
    def _labels(labels: dict[str, str]) -> None:
        if len(labels) > MAX_LABELS:
            raise Refused(400, "INVALID_ARGUMENT", "invalid", "Invalid value for field "
                          f"'resource.labels': {len(labels)} labels; at most {MAX_LABELS}")
        for k, v in labels.items():
            if not LABEL_KEY.fullmatch(k) or not LABEL_VALUE.fullmatch(v):
                raise Refused(400, "INVALID_ARGUMENT", "invalid", "Invalid value for field "
                              f"'resource.labels': '{k}'='{v}'. Label keys must start with "
                              "a lowercase letter; keys and values at most 63 characters "
                              "of lowercase letters, digits, '_' and '-'")

    @staticmethod
    def _machine_type(zone: str, value: str) -> None:
        name = value.rsplit("/", 1)[-1]
        if name not in MACHINE_TYPES or (value.count("/") and f"zones/{zone}/" not in value):
            raise Refused(400, "INVALID_ARGUMENT", "invalid", "Invalid value for field "
                          f"'resource.machineType': '{value}'. Machine type with name "
                          f"'{name}' does not exist in zone '{zone}'.")

    def _user_of(self, zone: Zone, disk: str) -> str | None:
        for inst in zone.instances.values():
            if any(d.get("source", "").rsplit("/", 1)[-1] == disk for d in inst["disks"]):
                return str(inst["name"])
        return None

    def _attachable(self, p: str, z: str, zone: Zone, attached: dict[str, Any],
                    to: str) -> None:
        src = attached.get("source", "")
        name = src.rsplit("/", 1)[-1]
        if not src:
            return
        if name not in zone.disks:
            raise Refused(404, "NOT_FOUND", "notFound",
                          f"The resource 'projects/{p}/zones/{z}/disks/{name}' was not found")
        user = self._user_of(zone, name)
        if user is not None and user != to and attached.get("mode", "READ_WRITE") != "READ_ONLY":
            raise Refused(400, "INVALID_ARGUMENT", "resourceInUseByAnotherResource",
                          f"The disk resource 'projects/{p}/zones/{z}/disks/{name}' is "
                          f"already being used by 'projects/{p}/zones/{z}/instances/{user}'")

    def _find(self, request: Request, kind: str) -> tuple[str, str, Zone, str, Any,
                                                          JSONResponse | None]:
        """The named resource of a request: (project, zone, its Zone, name, the resource,
        an answer already made: a replayed request's operation, or GCE's 404)."""
        p, z, name = (request.path_params[k] for k in ("project", "zone", "name"))
        zone = self._zone(p, z)
        found = (zone.instances if kind == "instances" else zone.disks).get(name)
        rid = request.query_params.get("requestId")
        if rid in self._requests:
            return p, z, zone, name, found, self._answer(self.ops[self._requests[rid]], request)
        if found is None:
            return p, z, zone, name, None, _error(
                404, "NOT_FOUND", "notFound",
                f"The resource 'projects/{p}/zones/{z}/{kind}/{name}' was not found")
        return p, z, zone, name, found, None

    # -- instances -------------------------------------------------------------------------
    async def instances_list_insert(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        p, z = request.path_params["project"], request.path_params["zone"]
        zone = self._zone(p, z)
        with self._lock:
            if request.method == "GET":
                return _page("compute#instanceList", list(zone.instances.values()), request)
            try:
                return self._insert_instance(request, p, z, zone, body)
            except Refused as exc:
                return exc.answer

    def _insert_instance(self, request: Request, p: str, z: str, zone: Zone,
                         body: dict[str, Any]) -> JSONResponse:
        name = body.get("name")
        rid = request.query_params.get("requestId")
        if rid in self._requests:
            return self._answer(self.ops[self._requests[rid]], request)
        self._name("instance", name)
        self._labels(body.get("labels", {}))
        self._machine_type(z, body.get("machineType", ""))
        link = f"{API}/projects/{p}/zones/{z}/instances/{name}"
        if name in zone.instances:
            raise Refused(409, "ALREADY_EXISTS", "alreadyExists",
                          f"The resource '{link}' already exists")
        for d in body.get("disks", []):
            self._attachable(p, z, zone, d, str(name))
        if self.faults.quota_sync:
            raise Refused(403, "PERMISSION_DENIED", "quotaExceeded",
                          f"Quota 'CPUS' exceeded. Limit: 24.0 in region {z[:-2]}.")

        def effect(op: dict[str, Any]) -> None:
            if self.faults.capacity or self.faults.quota_op:
                if self.faults.quota_op:
                    self._fail(op, "QUOTA_EXCEEDED", f"Quota 'CPUS' exceeded. Limit: 24.0 in "
                               f"region {z[:-2]}.", 403)
                else:
                    self._fail(op, "ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have "
                               "enough resources available to fulfill the request.")
                zone.instances.pop(str(name), None)
                return
            zone.instances[str(name)]["status"] = "RUNNING"
        zone.instances[str(name)] = {
            "kind": "compute#instance", "id": str(next(self._ids)), "name": name,
            "selfLink": link, "status": "PROVISIONING", "zone": f"{API}/projects/{p}/zones/{z}",
            "machineType": body.get("machineType", ""), "labels": body.get("labels", {}),
            "disks": [{**d, "deviceName": d.get("deviceName") or f"persistent-disk-{i}",
                       "autoDelete": d.get("autoDelete", False)}
                      for i, d in enumerate(body.get("disks", []))],
            # Loopback: the control plane calls runtimes (flush, probes), and tests
            # send nothing beyond this machine.
            "networkInterfaces": [{"network": "default", "networkIP": "127.0.0.1"}],
            "metadata": {**body.get("metadata", {}),
                         "fingerprint": _fingerprint(body.get("metadata", {}).get("items"))},
            "labelFingerprint": _fingerprint(body.get("labels", {})),
            "serviceAccounts": body.get("serviceAccounts", []),
            "tags": body.get("tags", {}), "scheduling": body.get("scheduling", {}),
            "creationTimestamp": _stamp()}
        return self._answer(self._op(p, z, "insert", link, effect, rid), request)

    async def instance_get_delete(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        with self._lock:
            p, z, zone, name, inst, answer = self._find(request, "instances")
            rid = request.query_params.get("requestId")
            if answer is not None:
                return answer
            if request.method == "GET":
                return JSONResponse(_public(inst))

            def effect(op: dict[str, Any]) -> None:
                gone = zone.instances.pop(name, None)
                for d in (gone or {}).get("disks", []):
                    if d.get("autoDelete") and d.get("source"):
                        zone.disks.pop(d["source"].rsplit("/", 1)[-1], None)
            inst["status"] = "STOPPING" if inst["status"] == "RUNNING" else inst["status"]
            return self._answer(self._op(p, z, "delete", inst["selfLink"], effect, rid),
                                request)

    async def instance_verb(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        verb = request.path_params["verb"]
        with self._lock:
            p, z, zone, _, inst, answer = self._find(request, "instances")
            rid = request.query_params.get("requestId")
            if answer is not None:
                return answer
            try:
                effect = self._verb(verb, p, z, zone, inst, body, request)
            except Refused as exc:
                return exc.answer
            return self._answer(self._op(p, z, verb, inst["selfLink"], effect, rid), request)

    def _verb(self, verb: str, p: str, z: str, zone: Zone, inst: dict[str, Any],
              body: dict[str, Any], request: Request) -> Any:
        status, name = inst["status"], inst["name"]

        def not_ready(what: str) -> Refused:
            return Refused(400, "FAILED_PRECONDITION", "resourceNotReady",
                           f"The resource 'projects/{p}/zones/{z}/instances/{name}' is not "
                           f"ready: it is {status}; {what}")

        def set_status(value: str) -> Any:
            def effect(op: dict[str, Any]) -> None:
                inst["status"] = value
            return effect

        def starting(op: dict[str, Any]) -> None:
            if self.faults.stockout_on_start:
                self._fail(op, "ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have "
                           "enough resources available to fulfill the request. Try a "
                           "different zone, or try again later.")
                inst["status"] = "TERMINATED" if verb == "start" else "SUSPENDED"
                return
            inst["status"] = "RUNNING"

        if verb == "stop":  # a SUSPENDED instance may be stopped too (its memory is lost)
            if status in ("TERMINATED", "STOPPING"):
                return set_status(status)
            inst["status"] = "STOPPING"
            return set_status("TERMINATED")
        if verb == "suspend":
            if status != "RUNNING":
                raise not_ready("only a RUNNING instance can be suspended")
            if NOT_SUSPENDABLE.fullmatch(inst["machineType"].rsplit("/", 1)[-1]):
                raise Refused(400, "INVALID_ARGUMENT", "unsupportedOperation",
                              f"Instance '{name}' cannot be suspended: its machine type "
                              "has GPUs or more than 208 GB of memory")
            inst["status"] = "SUSPENDING"
            return set_status("SUSPENDED")
        if verb == "start":
            if status == "SUSPENDED":
                raise not_ready("a SUSPENDED instance is resumed with instances.resume")
            if status != "TERMINATED":
                raise not_ready("only a TERMINATED instance can be started")
            inst["status"] = "STAGING"
            return starting
        if verb == "resume":
            if status != "SUSPENDED":
                raise not_ready("only a SUSPENDED instance can be resumed")
            inst["status"] = "STAGING"
            return starting
        if verb == "detachDisk":
            device = request.query_params["deviceName"]
            if not any(d.get("deviceName") == device for d in inst["disks"]):
                raise Refused(400, "INVALID_ARGUMENT", "invalid", f"Invalid value for field "
                              f"'deviceName': '{device}'. No attached disk found with device "
                              "name")

            def detach(op: dict[str, Any]) -> None:
                inst["disks"] = [d for d in inst["disks"] if d.get("deviceName") != device]
            return detach
        if verb == "attachDisk":
            self._attachable(p, z, zone, body, name)

            def attach(op: dict[str, Any]) -> None:
                inst["disks"].append({**body, "autoDelete": body.get("autoDelete", False)})
            return attach
        if verb == "setDiskAutoDelete":
            device = request.query_params["deviceName"]
            value = request.query_params["autoDelete"] == "true"

            def auto_delete(op: dict[str, Any]) -> None:
                for d in inst["disks"]:
                    if d.get("deviceName") == device:
                        d["autoDelete"] = value
            return auto_delete
        if verb in ("setLabels", "setMetadata"):
            field_, current = ("labelFingerprint", inst["labels"]) if verb == "setLabels" \
                else ("fingerprint", inst["metadata"].get("items"))
            given = body.get(field_)
            if given != _fingerprint(current):
                raise Refused(412, "FAILED_PRECONDITION", "conditionNotMet",
                              "Supplied fingerprint does not match current metadata "
                              "fingerprint." if given else f"Required field '{field_}' not "
                              "specified")
            if verb == "setLabels":
                self._labels(body.get("labels", {}))

            # Applied on acceptance, so a second writer holding the old fingerprint is
            # refused at once (two claims of one spare: one wins).
            if verb == "setLabels":
                inst["labels"] = body.get("labels", {})
                inst["labelFingerprint"] = _fingerprint(inst["labels"])
            else:
                items = body.get("items", [])
                inst["metadata"] = {"kind": "compute#metadata", "items": items,
                                    "fingerprint": _fingerprint(items)}
            return lambda op: None
        if verb == "setMachineType":
            self._machine_type(z, body.get("machineType", ""))
            if status != "TERMINATED":
                raise not_ready("the instance must be stopped to change its machine type")

            def machine_type(op: dict[str, Any]) -> None:
                inst["machineType"] = body["machineType"]
            return machine_type
        raise Refused(400, "INVALID_ARGUMENT", "invalid", f"this fake does not do {verb}")

    # -- disks -------------------------------------------------------------------------
    async def disk_list_insert(self, request: Request) -> JSONResponse:
        body, err = await self._enter(request)
        if err:
            return err
        p, z = request.path_params["project"], request.path_params["zone"]
        zone = self._zone(p, z)
        with self._lock:
            if request.method == "GET":
                return _page("compute#diskList", list(zone.disks.values()), request)
            rid = request.query_params.get("requestId")
            if rid in self._requests:
                return self._answer(self.ops[self._requests[rid]], request)
            name = body.get("name")
            link = f"{API}/projects/{p}/zones/{z}/disks/{name}"
            try:
                self._name("disk", name)
                self._labels(body.get("labels", {}))
                kind = body.get("type", "pd-standard").rsplit("/", 1)[-1]
                if kind not in DISK_TYPES:
                    raise Refused(400, "INVALID_ARGUMENT", "invalid", "Invalid value for "
                                  f"field 'resource.type': '{body.get('type')}'.")
                if name in zone.disks:
                    raise Refused(409, "ALREADY_EXISTS", "alreadyExists",
                                  f"The resource '{link}' already exists")
            except Refused as exc:
                return exc.answer
            zone.disks[str(name)] = {"kind": "compute#disk", "id": str(next(self._ids)),
                                     "name": name, "sizeGb": str(body.get("sizeGb", "10")),
                                     "type": body.get("type", ""), "status": "CREATING",
                                     "labels": body.get("labels", {}), "selfLink": link,
                                     "zone": f"{API}/projects/{p}/zones/{z}",
                                     "creationTimestamp": _stamp()}

            def effect(op: dict[str, Any]) -> None:
                if name in zone.disks:
                    zone.disks[str(name)]["status"] = "READY"
            return self._answer(self._op(p, z, "insert", link, effect, rid), request)

    async def disk_get_delete(self, request: Request) -> JSONResponse:
        _, err = await self._enter(request)
        if err:
            return err
        with self._lock:
            p, z, zone, name, disk, answer = self._find(request, "disks")
            rid = request.query_params.get("requestId")
            if answer is not None:
                return answer
            if request.method == "GET":
                return JSONResponse({**disk, **({"users": [f"{API}/projects/{p}/zones/{z}/"
                                                           f"instances/{u}"]}
                                                if (u := self._user_of(zone, name)) else {})})
            user = self._user_of(zone, name)
            if user is not None:
                return _error(400, "INVALID_ARGUMENT", "resourceInUseByAnotherResource",
                              f"The disk resource 'projects/{p}/zones/{z}/disks/{name}' is "
                              f"already being used by 'projects/{p}/zones/{z}/instances/"
                              f"{user}'")

            def effect(op: dict[str, Any]) -> None:
                zone.disks.pop(name, None)
            return self._answer(self._op(p, z, "delete", disk["selfLink"], effect, rid),
                                request)


_FILTER = re.compile(r'\s*(?:labels\.(?P<label>[a-z0-9_-]+)\s*:\s*\*|(?P<field>name|status|'
                     r'labels\.[a-z0-9_-]+)\s*(?P<op>=|!=)\s*"?(?P<value>[^"\s)]*)"?)\s*')


def _matches(item: dict[str, Any], expression: str) -> bool:
    """The filter forms envmgr uses, joined by AND (or spaces), each optionally in
    parentheses; anything else is refused, as GCE refuses a filter it cannot parse."""
    for part in re.split(r"\s+AND\s+|\)\s*\(", expression.strip()):
        m = _FILTER.fullmatch(part.strip("() "))
        if m is None:
            raise Refused(400, "INVALID_ARGUMENT", "invalid",
                          f"Invalid value for field 'filter': '{expression}'. Invalid list "
                          "filter expression.")
        if m["label"] is not None:
            if m["label"] not in item.get("labels", {}):
                return False
        else:
            key = m["field"]
            value = item.get("labels", {}).get(key[7:]) if key.startswith("labels.") \
                else item.get(key)
            if (str(value) == m["value"]) != (m["op"] == "="):
                return False
    return True


def _page(kind: str, items: list[dict[str, Any]], request: Request) -> JSONResponse:
    q = request.query_params
    try:
        if q.get("filter"):
            items = [i for i in items if _matches(i, q["filter"])]
    except Refused as exc:
        return exc.answer
    items = sorted(items, key=lambda i: i["name"])
    size = min(int(q.get("maxResults", 500)), 500)
    start = int(q.get("pageToken") or 0)
    chunk = items[start:start + size]
    out: dict[str, Any] = {"kind": kind, "items": [_public(i) for i in chunk]}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return JSONResponse(out)


def _fingerprint(value: Any) -> str:
    """GCE's fingerprints are opaque base64 hashes of the content they guard."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(digest).decode()


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
