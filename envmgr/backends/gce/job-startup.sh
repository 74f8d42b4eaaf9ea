#!/bin/bash
# envmgr job VM startup script (GCE metadata `startup-script`): install the runner (envmgr's
# runtime package, hash-checked), then run the job agent, which fetches the notebook from the
# control plane's job API, runs it with papermill (in a network namespace of its own for
# `network: none`) and reports progress, log lines, outputs and the result back with the
# job's token. envmgr deletes the VM when the job ends; GCE deletes it by itself after the
# time limit and a margin (max_run_duration).
set -euo pipefail
# @install@
envmgr_install iproute2
id envmgr-job >/dev/null 2>&1 || useradd --system --create-home --shell /usr/sbin/nologin envmgr-job
ENVMGR_JOB_TOKEN="$(md envmgr-job-token)" exec /opt/envmgr/bin/python -m envmgr_runner.agent \
  "$(md envmgr-control-url)" /var/lib/envmgr-job --network "$(md envmgr-network)" --user envmgr-job
