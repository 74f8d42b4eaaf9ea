"""Configuration from ENVMGR_* environment variables (or an env file), with embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ENVMGR_", env_file=("envmgr.env",), extra="ignore"
    )

    # Root's default is /var/lib/envmgr: runtime users must be able to enter the data dir
    # to reach their disks, and nobody but root may enter /root.
    data_dir: Path = Field(default_factory=lambda: Path(
        "/var/lib/envmgr" if os.geteuid() == 0 else "~/.local/share/envmgr"))
    database_url: str = ""  # empty: SQLite file in the data dir
    backend: str = "local"
    storage: str = "local"
    storage_root: Path | None = None  # local buckets; default <data dir>/buckets
    gcs_project: str | None = None
    gcs_endpoint: str | None = None  # an emulator's URL (tests); None: real GCS
    secret_key: SecretStr | None = None  # signs tickets and cookies; default: in the data dir
    # Workspace buckets the service makes are named <prefix><workspace id> (GCS bucket names
    # are global: deployments set a prefix of their own).
    bucket_prefix: str = "envmgr-"
    notebook_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)

    # Notebook locks: held while a live tab of their holder has the notebook open in edit mode.
    lock_ttl_seconds: float = 180
    lock_renew_seconds: float = 60  # a tab's heartbeat; a closed tab's lock goes in ~3 of these
    lock_idle_minutes: float = 60  # a tab nobody used this long lets its locks go (saved first)
    # A notebook opened in edit or playground mode gets its kernel started by the runtime
    # as it is localized (it boots while JupyterLab's page loads); JupyterLab connects to it.
    kernel_on_open: bool = True
    # ...and takes a spare kernel booted ahead of demand, if one is ready (one per runtime,
    # started this long after the runtime starts or its spare was taken).
    spare_kernel: bool = True
    spare_kernel_delay_seconds: float = Field(default=10.0, ge=0)
    spare_kernel_max_load: float = Field(default=1.0, ge=0)  # per core; 0: never waits
    open_wait_seconds: float = 20  # how long `open` waits for a runtime before a 202
    host: str = "127.0.0.1"  # loopback unless an operator says otherwise
    port: int = 8000
    admin_token: SecretStr | None = None
    public_url: str | None = None  # how clients reach this service; default http://host:port
    # Runtimes are served on origins of their own: <runtime id>.<runtimes_domain>. Empty:
    # <runtime id>.localhost:<port> (browsers resolve *.localhost to the loopback).
    # Deployments: a domain that is not the control plane's site (a separate registrable
    # domain, as googleusercontent.com is for Google), with a wildcard DNS record.
    runtimes_domain: str = ""

    # Autopause (the sweep itself arrives with the autopause issue).
    autopause_interval_seconds: float = 60
    autopause_min_minutes: float = 5
    autopause_default_minutes: float = 30
    autopause_max_busy_hours: float = 24
    # JupyterLab shows a countdown this long before an autopause (at most half the idle time).
    autopause_warn_seconds: float = 300
    autopause_probe_timeout_seconds: float = 2  # one slow runtime never delays the sweep
    autopause_concurrency: int = 200

    # The operation worker.
    worker_concurrency: int = 16
    operation_lease_seconds: float = 15
    worker_poll_seconds: float = 1.0
    reconcile_interval_seconds: float = 60
    cost_accrual_interval_seconds: float = 30
    # Per-action deadlines; None takes the backend's own default.
    deadline_create_seconds: float | None = None
    deadline_start_seconds: float | None = None
    deadline_stop_seconds: float | None = None
    deadline_delete_seconds: float | None = None

    # Local backend.
    local_jupyter_command: list[str] = Field(default_factory=list)  # empty: this Python's
    local_port_range: tuple[int, int] | None = None  # None: any free port (not in containers)
    local_stop_grace_seconds: float = 10
    # Start runtimes by forking a process that has already imported jupyter-server and
    # JupyterLab (envmgr_jupyter.forkserver); off, or when it is unavailable: cold starts.
    local_fork_server: bool = True
    # Start what fast starts need (the fork server) as the control plane starts, not at the
    # first runtime start.
    warm_at_start: bool = True
    # As root, each runtime runs as a system user of its own (see envmgr/backends/sandbox.py).
    local_sandbox: bool = True
    # The sandbox's uids: base + a number the database hands out once and never again (one
    # per disk, one per job); keep the range clear of the machine's other accounts.
    local_uid_base: int = Field(default=2_000_000, ge=1000, le=4_000_000_000)
    # As root, a disk is a sparse ext4 image of its size, loop-mounted at its folder, so a
    # runtime cannot write past its size_gb (nor fill the data dir's file system); off, or
    # not root: a plain folder.
    local_disk_images: bool = True
    # As root with runc and tini installed, each runtime and job runs in a container of its
    # own (envmgr/backends/local/containers.py): its own mount, PID and IPC namespaces, a
    # read-only root, private /tmp and /dev/shm. Off, or either missing: the user alone.
    local_containers: bool = True
    # Containers pre-started with jupyter-server imported (no user, no disk, no credential):
    # a start claims one and is running in a fraction of a cold start's time (see
    # envmgr/backends/local/pool.py). 0: every start is cold. Each costs one idle Python.
    local_pool_size: int = Field(default=2, ge=0, le=64)
    # As root, each runtime and job runs in a control group with the memory, vCPUs and
    # processes of its machine type (envmgr/backends/local/limits.py); the scales fit the
    # catalog's machines onto a smaller host (0.25: an e2-standard-4 gets 4 GiB, 1 vCPU).
    local_limits: bool = True
    # A CPU quota too (vCPUs x scale). Off by default: on cgroup v1 it made cold starts
    # about twice as slow here (see envmgr/backends/local/limits.py).
    local_cpu_limit: bool = False
    local_memory_scale: float = Field(default=1.0, gt=0, le=1)
    local_cpu_scale: float = Field(default=1.0, gt=0, le=1)
    local_pids_max: int = Field(default=4096, ge=64)
    # Where sandboxed runtimes' images (hard links of this Python) are built; default
    # <data dir>/local/images. Several services on one machine may share one.
    local_images_dir: Path | None = None
    # Machine types, disk types and prices; None: the one shipped in envmgr/costs/.
    catalog_file: Path | None = None
    # Where runtimes reach the runtime API; default the service's own URL.
    runtime_api_url: str | None = None

    # GCE backend.
    gce_project: str = ""
    gce_zone: str = "us-central1-a"
    gce_endpoint: str | None = None  # a fake Compute API's URL (tests); None: the real one
    gce_image: str = "projects/debian-cloud/global/images/family/debian-12"
    gce_network: str = "global/networks/default"
    gce_subnetwork: str | None = None
    gce_service_account: str | None = None  # what runtimes run as
    gce_boot_disk_gb: int = 20
    gce_poll_seconds: float = 2.0
    gce_retry_initial_seconds: float = 1.0
    gce_retry_attempts: int = 8
    gce_readiness_timeout_seconds: float = 600  # wait for Jupyter to answer; 0: do not wait
    gce_jupyter_port: int = 8888
    # A pause suspends the VM (memory kept: kernels and their variables survive, and a
    # resume skips the boot and Jupyter's start) or stops it; machine types GCE cannot
    # suspend (GPUs, over 208 GB) are always stopped.
    gce_pause: Literal["suspend", "stop"] = "suspend"
    # Spare capacity (gce): this many booted VMs per machine type below, kept ahead of
    # demand; a create claims one and attaches the user's disk instead of inserting a VM.
    # Each spare bills as its machine type while it waits (the dashboard's "pool" line).
    # The local backend keeps no pool: its fork server starts a runtime in milliseconds.
    pool_size: int = Field(default=0, ge=0, le=100)
    pool_machine_types: list[str] = Field(default_factory=lambda: ["e2-standard-4"])
    pool_refill_seconds: float = Field(default=30, gt=0)

    # Notebook jobs (envmgr/jobs): per-user defaults an admin may change per user.
    job_concurrency: int = Field(default=2, ge=1)
    job_minutes_per_month: float = Field(default=600, ge=0)
    job_max_time_limit_seconds: int = Field(default=6 * 3600, ge=1)
    job_default_time_limit_seconds: int = Field(default=3600, ge=1)
    job_retention_days: float = Field(default=7, gt=0)
    job_retention_sweep_seconds: float = 60  # how often expired outputs are removed
    job_max_attempts: int = Field(default=3, ge=1)  # starts, retrying infrastructure failures
    job_poll_seconds: float = 0.25  # how often the supervisor looks at running jobs
    job_output_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    job_log_lines_max: int = 20_000  # kept per job for its live stream (all go to the bucket)
    webhook_allow_private: bool = False  # webhooks to loopback/private addresses (tests)
    webhook_timeout_seconds: float = 10

    # Database pool (PostgreSQL).
    db_pool_size: int = 10
    db_max_overflow: int = 20

    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _expand(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.storage_root is not None:
            self.storage_root = self.storage_root.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'envmgr.core.db'}"
        return self

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def runtime_api(self) -> str:
        return self.runtime_api_url or self.base_url

    @property
    def runtimes_host(self) -> str:
        """The host (and port) under which each runtime has its own subdomain."""
        return self.runtimes_domain or f"localhost:{self.port}"

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")
