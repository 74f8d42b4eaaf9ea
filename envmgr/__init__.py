"""envmgr: per-user notebook runtimes with detachable persistent disks."""

__version__ = "0.1.0"
