"""The notebook job runner: what runs on a job's own compute (a sandboxed process locally,
an ephemeral VM on GCE). It imports nothing of the control plane: it reads its job from a
folder and writes everything it has to say back into that folder (events as JSON lines,
the executed notebook, its HTML, the log, the result), which the control plane collects.
That also works inside a network namespace with nothing but a loopback (`network: none`)."""

__all__ = ["run"]

from envmgr_runner.runner import run
