"""Compute Engine: a runtime is a VM, its persistent disk a PD attached as `user-disk` with
auto_delete=False, driven with google-cloud-compute.

Every mutation carries a request id derived from the envmgr operation and the step, so a
call retried after a timeout, or re-driven after a crash, is the same request to GCE and
never makes a second VM; each step also looks before it acts. 429s, 5xx and timeouts are
retried with exponential backoff and jitter; capacity and quota errors end the operation
with a reason. Disks are deleted only by delete_disk, which only an explicit delete calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from prometheus_client import Counter, Gauge
from requests import exceptions as rexc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from envmgr.backends import runtime_package
from envmgr.backends.base import (
    CURRENT_OPERATION,
    Backend,
    BackendError,
    BackendStatus,
    DiskSpec,
    JobRun,
    JobSpec,
    RuntimeSpec,
    State,
    base_path,
)
from envmgr.core.clock import utcnow
from envmgr.settings import Settings

log = logging.getLogger(__name__)
SPARES = Gauge("envmgr_pool_spares", "Spare VMs by machine type and state (RUNNING: ready "
               "to claim; PROVISIONING/STAGING: on their way)", ["machine_type", "state"])
SPARES_WANTED = Gauge("envmgr_pool_spares_wanted", "Spares the pool keeps per machine type",
                      ["machine_type"])
CLAIMS = Counter("envmgr_pool_claims_total", "Creates of a pooled machine type, by whether "
                 "a spare was there (claimed) or the VM was inserted (empty)", ["outcome"])

# Instance.Status (compute.v1): PROVISIONING, STAGING, RUNNING, STOPPING, SUSPENDING,
# SUSPENDED, REPAIRING, TERMINATED, PENDING_STOP, DEPROVISIONING, PENDING.
STATES: dict[str, State] = {
    "PENDING": "starting", "PROVISIONING": "starting", "STAGING": "starting",
    "RUNNING": "running", "REPAIRING": "starting",  # GCE is repairing it: it comes back
    "PENDING_STOP": "stopping", "STOPPING": "stopping", "SUSPENDING": "stopping",
    "DEPROVISIONING": "stopping",  # on its way to TERMINATED (a stop or a delete)
    "TERMINATED": "stopped", "STOPPED": "stopped", "SUSPENDED": "stopped",
}
STOPPED = {"TERMINATED", "STOPPED", "SUSPENDED"}
SETTLING = {"PENDING_STOP", "STOPPING", "SUSPENDING", "DEPROVISIONING"}
MAX_LABELS = 64  # GCE's limit per resource
# Runtimes reach storage only through the control plane: a VM needs no Google API beyond
# writing its own logs and metrics (and only when a service account is configured).
SCOPES = ["https://www.googleapis.com/auth/logging.write",
          "https://www.googleapis.com/auth/monitoring.write"]
TRANSIENT = (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway,
             gexc.ServiceUnavailable, gexc.GatewayTimeout, rexc.ConnectionError,
             rexc.Timeout, ConnectionError, TimeoutError)
CAPACITY = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            "QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED")
DEVICE = "user-disk"
_NS = uuid.UUID("5c6f2f2e-8e0b-4d53-9d57-6e766d677223")
STARTUP = Path(__file__).resolve().parent / "startup.sh"
JOB_STARTUP = Path(__file__).resolve().parent / "job-startup.sh"
INSTALL = Path(__file__).resolve().parent / "install.sh"
JOB_ALIVE = ("PROVISIONING", "STAGING", "RUNNING")
# Spares: booted VMs with no user yet, labelled with their machine type; a claim relabels
# one as the runtime's (its name stays: GCE names are fixed) and attaches the user's disk.
POOL_LABEL = "envmgr-pool"
SPARE_PREFIX = "envmgr-spare-"
SPARE_ALIVE = ("PROVISIONING", "STAGING", "RUNNING")
# Machine types GCE cannot suspend (GPUs, or more than 208 GB of memory): always stopped.
NOT_SUSPENDABLE = ("a2-", "a3-", "g2-", "m1-", "m2-", "m3-")


def startup_script(path: Path) -> str:
    """A startup script with the shared install function in it (one file in metadata)."""
    return path.read_text().replace("# @install@\n", INSTALL.read_text())


def request_id(step: str, resource: str) -> str:
    """Stable for one envmgr operation's step (so retries and re-drives dedupe), different
    for the next operation (so a later resume is a new request)."""
    return str(uuid.uuid5(_NS, f"{CURRENT_OPERATION.get() or 'adhoc'}:{step}:{resource}"))


class GceBackend(Backend):
    name = "gce"
    deadlines: ClassVar[dict[str, float]] = {"create": 1800, "start": 1200, "stop": 600,
                                             "delete": 1800}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        s = settings
        if not s.gce_project:
            raise ValueError("ENVMGR_GCE_PROJECT is required for the gce backend")
        kw: dict[str, Any] = {}
        if s.gce_endpoint:
            kw = {"credentials": AnonymousCredentials(),
                  "client_options": ClientOptions(api_endpoint=s.gce_endpoint)}
        self.instances = compute_v1.InstancesClient(**kw)
        self.disks = compute_v1.DisksClient(**kw)
        self.ops = compute_v1.ZoneOperationsClient(**kw)
        self.project, self.zone = s.gce_project, s.gce_zone
        self._http = httpx.AsyncClient(timeout=5)
        self._names: dict[str, str] = {}  # runtime id -> its VM's name, when a spare's
        self._refill = asyncio.Event()
        # Spares as seen (name -> machine type, since, until), for the pool's cost.
        self._sightings: dict[str, tuple[str, datetime, datetime | None]] = {}

    # -- plumbing -------------------------------------------------------------------
    async def _retrying(self, fn: Any) -> Any:
        """Run a blocking API call in a thread, retried on 429/5xx/timeouts."""
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TRANSIENT),
                wait=wait_exponential_jitter(multiplier=self.settings.gce_retry_initial_seconds,
                                             max=30),
                stop=stop_after_attempt(self.settings.gce_retry_attempts), reraise=True):
            with attempt:
                return await asyncio.to_thread(fn)
        raise AssertionError("unreachable")

    async def _call(self, fn: Any, request: type, *,
                    expect: tuple[type[Exception], ...] = (), **kw: Any) -> Any:
        """One zonal API call; a retry repeats the same request (the same request id). A
        refusal (quota, a bad request, a disk in use) is the operation's reason, in GCE's
        words; NotFound, and what the caller `expect`s, stay exceptions it looks for."""
        req = request(project=self.project, zone=self.zone, **kw)
        passed: tuple[type[Exception], ...] = (gexc.NotFound, *expect)
        try:
            return await self._retrying(lambda: fn(request=req))
        except passed:
            raise
        except gexc.GoogleAPICallError as exc:
            reasons = {str(e.get("reason", "")) for e in exc.errors or [] if isinstance(e, dict)}
            text = f"{exc.message} {' '.join(reasons)}"
            if "quota" in text.lower() or "QUOTA_EXCEEDED" in text:
                raise BackendError(f"GCE quota exceeded in {self.zone}: {exc.message}; ask "
                                   "for more quota or use a smaller machine type") from None
            raise BackendError(f"GCE refused the request ({exc.code}): {exc.message}") \
                from None

    async def _wait(self, op: Any, what: str) -> None:
        """Poll a zone operation until DONE, soon at first (a label or metadata change takes
        about a second) then every `gce_poll_seconds`; its error becomes the reason."""
        name = op.name
        delay = self.settings.gce_poll_seconds / 8
        while True:
            current = await self._call(self.ops.get, compute_v1.GetZoneOperationRequest,
                                       operation=name)
            if current.status == compute_v1.Operation.Status.DONE:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.gce_poll_seconds)
        if current.error and current.error.errors:
            errs = current.error.errors
            codes = [e.code for e in errs]
            detail = "; ".join(f"{e.code}: {e.message}" for e in errs)
            if any(c in CAPACITY for c in codes):
                raise BackendError(f"GCE has no capacity or quota for {what} in {self.zone} "
                                   f"({detail}); try another machine type or later")
            raise BackendError(f"GCE could not {what}: {detail}")

    async def _named(self, name: str) -> compute_v1.Instance | None:
        try:
            found: compute_v1.Instance = await self._call(
                self.instances.get, compute_v1.GetInstanceRequest, instance=name)
            return found
        except gexc.NotFound:
            return None

    async def _get(self, runtime_id: str) -> compute_v1.Instance | None:
        """The runtime's VM: named after it, or a claimed spare that carries its label."""
        name = self._names.get(runtime_id, runtime_id)
        inst = await self._named(name)
        if inst is not None and (name == runtime_id or
                                 inst.labels.get("envmgr-runtime") == runtime_id):
            return inst
        found = await self._list(f'labels.envmgr-runtime = "{runtime_id}"')
        found = [i for i in found if i.labels.get("envmgr-runtime") == runtime_id]
        if not found:
            self._names.pop(runtime_id, None)
            return None
        self._names[runtime_id] = found[0].name
        return found[0]

    async def _list(self, expression: str) -> list[compute_v1.Instance]:
        req = compute_v1.ListInstancesRequest(project=self.project, zone=self.zone,
                                              filter=expression)
        found: list[compute_v1.Instance] = await self._retrying(
            lambda: list(self.instances.list(request=req)))
        return found

    def _endpoint(self, inst: compute_v1.Instance, runtime_id: str) -> str:
        ip = inst.network_interfaces[0].network_i_p if inst.network_interfaces else ""
        return f"http://{ip}:{self.settings.gce_jupyter_port}{base_path(runtime_id)}"

    async def _until(self, runtime_id: str, wanted: set[str]) -> compute_v1.Instance:
        while True:
            inst = await self._get(runtime_id)
            if inst is None:
                raise BackendError(f"instance {runtime_id} disappeared")
            if inst.status in wanted:
                return inst
            await asyncio.sleep(self.settings.gce_poll_seconds)

    async def _ready(self, runtime: RuntimeSpec, inst: compute_v1.Instance) -> str:
        """The startup script reports readiness by Jupyter answering on its port."""
        endpoint = self._endpoint(inst, runtime.id)
        limit = self.settings.gce_readiness_timeout_seconds
        if limit <= 0:
            return endpoint
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                r = await self._http.get(f"{endpoint}/api/status",
                                         headers={"Authorization": f"token {runtime.secret}"})
                if r.status_code == 200:
                    return endpoint
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.settings.gce_poll_seconds)
        raise BackendError(f"jupyter-server on {runtime.id} did not answer within {limit:.0f} s")

    def _labels(self, owner: str, workspace: str, runtime_id: str) -> dict[str, str]:
        def clean(v: str) -> str:
            return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_"
                           for c in v.lower())[:63]
        return {"envmgr-runtime": clean(runtime_id), "envmgr-owner": clean(owner),
                "envmgr-workspace": clean(workspace)}

    @staticmethod
    def _with_user_labels(own: dict[str, str], user: dict[str, str]) -> dict[str, str]:
        """envmgr's labels first, then the user's in name order, at most 64 in all (GCE's
        limit; costs are attributed from envmgr's own records, not from GCE's labels)."""
        room = MAX_LABELS - len(own)
        return {**dict(sorted((k, v) for k, v in user.items() if k not in own)[:room]), **own}

    def package_metadata(self) -> dict[str, str]:
        """Where a VM gets envmgr's runtime package, and the SHA-256 it must have."""
        base = self.settings.runtime_api
        return {"envmgr-package-url": f"{base}{runtime_package.ROUTE}/requirements.txt",
                "envmgr-package-sha256": runtime_package.build().requirements_sha256(base)}

    # -- disks ----------------------------------------------------------------------
    async def create_disk(self, disk: DiskSpec) -> None:
        try:
            await self._call(self.disks.get, compute_v1.GetDiskRequest, disk=disk.id)
            return  # already there (a re-driven step)
        except gexc.NotFound:
            pass
        body = compute_v1.Disk(
            name=disk.id, size_gb=disk.size_gb,
            type_=f"zones/{self.zone}/diskTypes/{disk.type}",
            labels={k: v for k, v in self._labels(disk.owner, disk.workspace, "").items()
                    if k != "envmgr-runtime"})
        op = await self._call(self.disks.insert, compute_v1.InsertDiskRequest, disk_resource=body,
                              request_id=request_id("disk-insert", disk.id))
        await self._wait(op, f"create disk {disk.id}")

    async def delete_disk(self, disk: DiskSpec) -> None:
        try:
            op = await self._call(self.disks.delete, compute_v1.DeleteDiskRequest, disk=disk.id,
                                  request_id=request_id("disk-delete", disk.id))
        except gexc.NotFound:
            return
        await self._wait(op, f"delete disk {disk.id}")

    async def attach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None:
        inst = await self._get(runtime.id)
        if inst is None or self._has_user_disk(inst):
            return  # create() attaches it when it makes the instance
        body = compute_v1.AttachedDisk(source=f"zones/{self.zone}/disks/{disk.id}",
                                       device_name=DEVICE, auto_delete=False)
        op = await self._call(self.instances.attach_disk, compute_v1.AttachDiskInstanceRequest,
                              instance=inst.name,
                              attached_disk_resource=body,
                              request_id=request_id("attach", runtime.id))
        await self._wait(op, f"attach disk {disk.id}")

    @staticmethod
    def _has_user_disk(inst: compute_v1.Instance | None) -> bool:
        return inst is not None and any(d.device_name == DEVICE for d in inst.disks)

    async def detach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None:
        """Detach the user's PD if it is attached, never from a running VM (Google warns
        of corruption when a mounted disk goes): the VM is stopped first."""
        inst = await self._get(runtime.id)
        if not self._has_user_disk(inst):
            return
        assert inst is not None
        if inst.status not in STOPPED:
            await self.stop(runtime)
        op = await self._call(self.instances.detach_disk, compute_v1.DetachDiskInstanceRequest,
                              instance=inst.name, device_name=DEVICE,
                              request_id=request_id("detach", runtime.id))
        await self._wait(op, f"detach the disk of {runtime.id}")

    # -- instances ------------------------------------------------------------------
    def _body(self, name: str, machine_type: str, labels: dict[str, str],
              metadata: dict[str, str], disk: DiskSpec | None) -> compute_v1.Instance:
        """A runtime's VM (or a spare, with no user disk yet): boot disk, network, the
        startup script, and the runtime's own narrow service account if one is set."""
        s = self.settings
        disks = [compute_v1.AttachedDisk(
            boot=True, auto_delete=True, device_name="boot",
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=s.gce_image, disk_size_gb=s.gce_boot_disk_gb))]
        if disk is not None:
            disks.append(compute_v1.AttachedDisk(source=f"zones/{self.zone}/disks/{disk.id}",
                                                 device_name=DEVICE, auto_delete=False))
        return compute_v1.Instance(
            name=name, machine_type=f"zones/{self.zone}/machineTypes/{machine_type}",
            labels=labels, disks=disks,
            network_interfaces=[compute_v1.NetworkInterface(
                network=s.gce_network, subnetwork=s.gce_subnetwork)],
            metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v)
                                                for k, v in metadata.items()]),
            service_accounts=[compute_v1.ServiceAccount(
                email=s.gce_service_account, scopes=SCOPES)]
            if s.gce_service_account else [],
            tags=compute_v1.Tags(items=["envmgr-runtime"]))

    def _base_metadata(self) -> dict[str, str]:
        s = self.settings
        return {"startup-script": startup_script(STARTUP), "envmgr-control-url": s.runtime_api,
                "envmgr-port": str(s.gce_jupyter_port),
                # the edit locks' heartbeat and idle limit, as the service's settings say
                "envmgr-lock-renew-seconds": str(s.lock_renew_seconds),
                "envmgr-lock-idle-seconds": str(s.lock_idle_minutes * 60),
                **self.package_metadata()}

    def _runtime_metadata(self, runtime: RuntimeSpec) -> dict[str, str]:
        # No credential a project viewer could use: the VM redeems a single-use boot
        # ticket for its tokens once (runtime API /boot) and keeps them on its boot disk.
        return {"envmgr-runtime": runtime.id, "envmgr-owner": runtime.owner,
                "envmgr-boot-ticket": runtime.boot_ticket}

    def _runtime_labels(self, runtime: RuntimeSpec) -> dict[str, str]:
        return self._with_user_labels(
            self._labels(runtime.owner, runtime.workspace, runtime.id), runtime.labels)

    async def create(self, runtime: RuntimeSpec, disk: DiskSpec) -> str:
        inst = await self._get(runtime.id)
        if inst is None:
            inst = await self._claim(runtime)
        if inst is None:
            body = self._body(runtime.id, runtime.machine_type, self._runtime_labels(runtime),
                              {**self._base_metadata(), **self._runtime_metadata(runtime)},
                              disk)
            op = await self._call(self.instances.insert, compute_v1.InsertInstanceRequest,
                                  instance_resource=body,
                                  request_id=request_id("insert", runtime.id))
            await self._wait(op, f"create {runtime.machine_type} instance {runtime.id}")
        elif inst.name != runtime.id:  # a claimed spare (now, or by an earlier try)
            await self._bind(runtime, disk, inst)
        inst = await self._until(runtime.id, {"RUNNING"})
        return await self._ready(runtime, inst)

    async def start(self, runtime: RuntimeSpec) -> str:
        inst = await self._get(runtime.id)
        if inst is None:
            raise BackendError(f"instance {runtime.id} does not exist; delete this runtime "
                               "keeping its disk and create a new one on that disk")
        if inst.status in SETTLING:
            inst = await self._until(runtime.id, STOPPED)
        if inst.status == "SUSPENDED":  # paused by suspend (or by hand): resume, not start
            op = await self._call(self.instances.resume, compute_v1.ResumeInstanceRequest,
                                  instance=inst.name,
                                  request_id=request_id("resume", runtime.id))
            await self._wait(op, f"resume instance {runtime.id}")
        elif inst.status in STOPPED:
            op = await self._call(self.instances.start, compute_v1.StartInstanceRequest,
                                  instance=inst.name,
                                  request_id=request_id("start", runtime.id))
            await self._wait(op, f"start instance {runtime.id}")
        inst = await self._until(runtime.id, {"RUNNING"})
        return await self._ready(runtime, inst)

    def _suspends(self, inst: compute_v1.Instance) -> bool:
        kind = inst.machine_type.rsplit("/", 1)[-1]
        return self.settings.gce_pause == "suspend" and not kind.startswith(NOT_SUSPENDABLE)

    async def stop(self, runtime: RuntimeSpec) -> None:
        """A pause: suspend (memory kept, so kernels survive and a resume skips the boot)
        where GCE can, else stop."""
        await self._halt(runtime, suspend=True)

    async def _halt(self, runtime: RuntimeSpec, suspend: bool) -> None:
        inst = await self._get(runtime.id)
        if inst is None:
            return
        if inst.status in SETTLING:
            inst = await self._until(runtime.id, STOPPED)
        if inst.status == "TERMINATED" or (inst.status in STOPPED and suspend):
            return
        verb = "suspend" if suspend and inst.status == "RUNNING" and self._suspends(inst) \
            else "stop"  # a SUSPENDED VM may be stopped too (for a disk or type change)
        call, req = (self.instances.suspend, compute_v1.SuspendInstanceRequest) \
            if verb == "suspend" else (self.instances.stop, compute_v1.StopInstanceRequest)
        op = await self._call(call, req, instance=inst.name,
                              request_id=request_id(verb, runtime.id))
        await self._wait(op, f"{verb} instance {runtime.id}")
        await self._until(runtime.id, STOPPED)

    async def delete(self, runtime: RuntimeSpec) -> None:
        inst = await self._get(runtime.id)
        if inst is None:
            return
        # The PD stays because it is attached with autoDelete=false (never detached from a
        # running VM, where it is mounted); an older attachment is switched first.
        if any(d.device_name == DEVICE and d.auto_delete for d in inst.disks):
            op = await self._call(self.instances.set_disk_auto_delete,
                                  compute_v1.SetDiskAutoDeleteInstanceRequest,
                                  instance=inst.name, device_name=DEVICE, auto_delete=False,
                                  request_id=request_id("keep-disk", runtime.id))
            await self._wait(op, f"keep the disk of {runtime.id}")
        try:
            op = await self._call(self.instances.delete, compute_v1.DeleteInstanceRequest,
                                  instance=inst.name,
                                  request_id=request_id("delete", runtime.id))
        except gexc.NotFound:
            return
        await self._wait(op, f"delete instance {runtime.id}")
        self._names.pop(runtime.id, None)

    async def set_machine_type(self, runtime: RuntimeSpec, machine_type: str) -> None:
        await self._halt(runtime, suspend=False)  # GCE changes only a TERMINATED VM's type
        inst = await self._get(runtime.id)
        if inst is None:
            raise BackendError(f"instance {runtime.id} does not exist")
        body = compute_v1.InstancesSetMachineTypeRequest(
            machine_type=f"zones/{self.zone}/machineTypes/{machine_type}")
        op = await self._call(self.instances.set_machine_type,
                              compute_v1.SetMachineTypeInstanceRequest, instance=inst.name,
                              instances_set_machine_type_request_resource=body,
                              request_id=request_id("set-machine-type", runtime.id))
        await self._wait(op, f"change {runtime.id} to {machine_type}")

    # -- the pool of spares -----------------------------------------------------------
    def _pooled(self, machine_type: str) -> bool:
        return self.settings.pool_size > 0 and machine_type in self.settings.pool_machine_types

    async def _claim(self, runtime: RuntimeSpec) -> compute_v1.Instance | None:
        """Take a RUNNING spare of the runtime's machine type: relabel it as the runtime's,
        guarded by its label fingerprint, so of two claims of one spare exactly one wins
        (GCE refuses the other with 412). None when there is no spare: insert instead."""
        if not self._pooled(runtime.machine_type):
            return None
        spares = await self._list(f'labels.{POOL_LABEL} = "{runtime.machine_type}"')
        for spare in sorted(spares, key=lambda i: i.name):
            if spare.status != "RUNNING" or "envmgr-runtime" in spare.labels:
                continue
            body = compute_v1.InstancesSetLabelsRequest(
                label_fingerprint=spare.label_fingerprint,
                labels=self._runtime_labels(runtime))
            try:
                op = await self._call(self.instances.set_labels,
                                      compute_v1.SetLabelsInstanceRequest, instance=spare.name,
                                      instances_set_labels_request_resource=body,
                                      expect=(gexc.PreconditionFailed,),
                                      request_id=request_id("claim", f"{runtime.id}/{spare.name}"))
            except (gexc.PreconditionFailed, gexc.NotFound):
                continue  # another create took it first
            await self._wait(op, f"claim spare {spare.name}")
            self._names[runtime.id] = spare.name
            CLAIMS.labels("claimed").inc()
            self._sightings.setdefault(spare.name, (runtime.machine_type, utcnow(), None))
            mt, since, _ = self._sightings[spare.name]
            self._sightings[spare.name] = (mt, since, utcnow())
            self._refill.set()
            log.info("claimed a spare", extra={"runtime_id": runtime.id,
                                               "instance": spare.name})
            return spare
        log.info("no spare left: inserting", extra={"runtime_id": runtime.id,
                                                    "machine_type": runtime.machine_type})
        CLAIMS.labels("empty").inc()
        self._refill.set()
        return None

    async def _bind(self, runtime: RuntimeSpec, disk: DiskSpec,
                    inst: compute_v1.Instance) -> None:
        """Give a claimed spare its runtime (metadata the waiting VM reads) and the user's
        disk (attached while it runs: it is not mounted yet). Each part looks first, so a
        re-driven create finishes what a crash left."""
        current = {i.key: i.value for i in inst.metadata.items}
        if current.get("envmgr-runtime") != runtime.id:
            items = {**current, **self._runtime_metadata(runtime)}
            body = compute_v1.Metadata(
                fingerprint=inst.metadata.fingerprint,
                items=[compute_v1.Items(key=k, value=v) for k, v in items.items()])
            op = await self._call(self.instances.set_metadata,
                                  compute_v1.SetMetadataInstanceRequest, instance=inst.name,
                                  metadata_resource=body,
                                  request_id=request_id("bind", runtime.id))
            await self._wait(op, f"hand spare {inst.name} to {runtime.id}")
        await self.attach(runtime, disk)

    async def refill(self) -> None:
        """Keep `pool_size` spares alive per pooled machine type: insert the missing ones
        under the lowest free slot names (two replicas pick the same names, and GCE's
        409 keeps them from doubling the pool), delete the ones no longer wanted."""
        spares = await self._list(f"labels.{POOL_LABEL}:*")
        taken = {i.name for i in spares} | \
            {i.name for i in await self._list("labels.envmgr-runtime:*")}
        by_type: dict[str, list[compute_v1.Instance]] = {}
        for inst in spares:
            if "envmgr-runtime" not in inst.labels and inst.status in SPARE_ALIVE:
                by_type.setdefault(inst.labels[POOL_LABEL], []).append(inst)
        wanted = {mt: self.settings.pool_size for mt in self.settings.pool_machine_types}
        self._sighted({i.name: i.labels[POOL_LABEL] for insts in by_type.values()
                       for i in insts})
        for mt in {*wanted, *by_type}:
            SPARES_WANTED.labels(mt).set(wanted.get(mt, 0))
            for state in SPARE_ALIVE:
                SPARES.labels(mt, state).set(sum(i.status == state
                                                 for i in by_type.get(mt, [])))
        inserts = []
        for mt, size in wanted.items():
            free = (f"{SPARE_PREFIX}{mt}-{n}" for n in itertools.count()
                    if f"{SPARE_PREFIX}{mt}-{n}" not in taken)
            for _ in range(size - len(by_type.get(mt, []))):
                inserts.append(self._insert_spare(next(free), mt))
        for mt, insts in by_type.items():
            for inst in sorted(insts, key=lambda i: i.name)[wanted.get(mt, 0):]:
                inserts.append(self._delete_spare(inst.name))
        for failed in await asyncio.gather(*inserts, return_exceptions=True):
            if isinstance(failed, Exception):
                log.warning("pool: %s", failed)

    async def _insert_spare(self, name: str, machine_type: str) -> None:
        body = self._body(name, machine_type, {POOL_LABEL: machine_type},
                          self._base_metadata(), None)
        try:
            op = await self._call(self.instances.insert, compute_v1.InsertInstanceRequest,
                                  instance_resource=body, expect=(gexc.Conflict,),
                                  request_id=request_id("spare", f"{name}:{time.time():.0f}"))
        except gexc.Conflict:
            return  # another replica made it
        await self._wait(op, f"create spare {name}")

    async def _delete_spare(self, name: str) -> None:
        op = await self._call(self.instances.delete, compute_v1.DeleteInstanceRequest,
                              instance=name, request_id=request_id("spare-delete", name))
        await self._wait(op, f"delete spare {name}")

    def _sighted(self, alive: dict[str, str]) -> None:
        now = utcnow()
        for name, machine_type in alive.items():
            self._sightings.setdefault(name, (machine_type, now, None))
        for name, (machine_type, since, until) in list(self._sightings.items()):
            if name not in alive and until is None:
                self._sightings[name] = (machine_type, since, now)

    def spares(self) -> dict[str, tuple[str, datetime, datetime | None]]:
        report = dict(self._sightings)
        for name, (_, _, until) in report.items():
            if until is not None:
                del self._sightings[name]  # its end is reported once
        return report

    async def warm(self) -> None:
        """The pool's keeper, for as long as the control plane runs: a pass every
        `pool_refill_seconds`, and at once after a claim (with no pool configured, one
        pass removes the spares an earlier configuration left)."""
        while True:
            try:
                await self.refill()
            except (BackendError, *TRANSIENT, gexc.GoogleAPICallError) as exc:
                log.warning("pool refill failed: %s", exc)
            if self.settings.pool_size == 0 and not self._sightings:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refill.wait(), self.settings.pool_refill_seconds)
            self._refill.clear()

    async def status(self, runtime: RuntimeSpec) -> BackendStatus:
        inst = await self._get(runtime.id)
        return BackendStatus("absent") if inst is None else self._observed(inst)

    def _observed(self, inst: compute_v1.Instance) -> BackendStatus:
        state = STATES.get(inst.status, "starting")
        rid = inst.labels.get("envmgr-runtime") or inst.name
        return BackendStatus(state, self._endpoint(inst, rid)
                             if state == "running" else None, detail=f"GCE {inst.status}")

    async def inventory(self) -> dict[str, BackendStatus]:
        """One paged list call per sweep (the client follows nextPageToken). Job VMs are
        not runtimes (checked here too, not only by the filter)."""
        found = await self._list("labels.envmgr-runtime:*")
        return {inst.labels["envmgr-runtime"]: self._observed(inst) for inst in found
                if "envmgr-runtime" in inst.labels}

    # -- notebook jobs: an ephemeral VM each, deleted when the job ends ---------------
    async def start_job(self, job: JobSpec) -> dict[str, object]:
        """A VM with no service account (a job needs no Google API: it reaches the bucket
        only through the control plane's job API) and a boot disk that goes with it; its
        startup script fetches the notebook and reports back with the job's token. GCE
        deletes it by itself after the time limit and a margin, should envmgr not."""
        if await self._named(job.id) is None:
            s = self.settings
            metadata = {"startup-script": startup_script(JOB_STARTUP), "envmgr-job": job.id,
                        "envmgr-control-url": s.runtime_api, "envmgr-job-token": job.token,
                        "envmgr-network": job.network, **self.package_metadata()}
            tags = ["envmgr-job"] + (["envmgr-job-no-egress"] if job.network == "none" else [])
            labels = {**job.labels, "envmgr-job": job.id,
                      **{k: v for k, v in self._labels(job.owner, job.workspace, "").items()
                         if k != "envmgr-runtime"}}
            body = self._body(job.id, job.machine_type, labels, metadata, None)
            body.service_accounts = []
            body.tags = compute_v1.Tags(items=tags)
            body.scheduling = compute_v1.Scheduling(
                max_run_duration=compute_v1.Duration(
                    seconds=max(job.time_limit_seconds, 60) + 900),
                instance_termination_action="DELETE")
            op = await self._call(self.instances.insert, compute_v1.InsertInstanceRequest,
                                  instance_resource=body,
                                  request_id=request_id("job-insert", job.id))
            await self._wait(op, f"create {job.machine_type} instance for job {job.id}")
        return {"instance": job.id}

    async def poll_job(self, job: JobSpec, handle: dict[str, object], offset: int) -> JobRun:
        """Its events and result arrive over the job API (in `handle["result"]`); here only
        whether its VM still lives."""
        inst = await self._named(job.id)
        result = handle.get("result")
        alive = inst is not None and inst.status in JOB_ALIVE
        detail = "" if alive else f"its VM is {inst.status if inst else 'gone'}"
        return JobRun([], offset, alive, result if isinstance(result, dict) else None, detail)

    async def kill_job(self, job: JobSpec, handle: dict[str, object]) -> None:
        """Deleting the VM is the kill (no guest can outlive it)."""
        try:
            op = await self._call(self.instances.delete, compute_v1.DeleteInstanceRequest,
                                  instance=job.id, request_id=request_id("job-delete", job.id))
        except gexc.NotFound:
            return
        await self._wait(op, f"delete the VM of job {job.id}")

    async def cleanup_job(self, job: JobSpec, handle: dict[str, object]) -> None:
        await self.kill_job(job, handle)

    async def job_inventory(self) -> list[str]:
        found = await self._list("labels.envmgr-job:*")
        return [inst.name for inst in found if "envmgr-job" in inst.labels]

    async def ping(self) -> None:
        await self._call(self.ops.list, compute_v1.ListZoneOperationsRequest, max_results=1)

    async def close(self) -> None:
        await self._http.aclose()
