"""The engine: fenced claims, leases and heartbeats, execution and completion, retries, stage
and run progression, Merkle receipts, wake-ups (docs/architecture.md, "The life of a
partition").

The database is the truth; the queue only wakes workers (docs/architecture.md, "The queue
only wakes workers"). A worker claims a partition in one short transaction that bumps its
fence; every later write of that worker (heartbeat, completion, failure) is a compare-and-swap
on (id, fence, state), so a worker that lost its lease changes nothing. Stage counters move
in the same transactions as partitions, so progress is one read.

Modules, from the bottom up (each imports only those above it):

- `errors`: the engine's exceptions (`PartitionTimeout`, `RunAborted`).
- `claims`: claiming partitions under a fence (`claim_batch`), stage counters.
- `wakeups`: asking workers to drain a run (`wake`, `enqueue_drainers`, `requeue_stuck`).
- `receipts`: Merkle leaves and roots, the receipt's effect check (`check_effects`).
- `heartbeat`: leases only: renewal, the cancellation watch, `check_fence`.
- `progress`: waves, starting and finishing stages, advancing and finishing runs.
- `execute`: running claimed partitions, reuse, recording outcomes, expiring leases.
- `partitioning`: a resolved manifest written in bounded transactions under a per-run
  lease, the switch of a run from `partitioning` to `running` (`write_manifest`).

`runs_app.tasks` (the django-q2 entry points) imports the engine; the engine never imports
`runs_app.tasks`, the views or the API.
"""
