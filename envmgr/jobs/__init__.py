"""Notebook jobs: a notebook run headless on compute of its own (never a user's runtime),
with parameters, limits, cancel, outputs in the bucket, live progress and signed webhooks.

- machine.py: the job state machine as data, and the only writer of a job's status
- service.py: what the routers call (submit, read, cancel, outputs, limits, usage)
- limits.py: per-user concurrency, monthly run-time budget and maximum time limit
- supervisor.py: the leader's loop that starts queued jobs, watches running ones, enforces
  time limits, budgets and cancels, and collects outputs
- webhooks.py: signed, retried deliveries, and the address rules that keep them off
  private networks
"""
