"""``nnbound sweep``: a models x images x methods grid, split into tasks that run in this
process, in local worker processes or on a Ray cluster, written as resumable shards and merged
into one table and the HTML sandwich report.

Modules: :mod:`~nnbound.sweep.plan` (the TOML plan), :mod:`~nnbound.sweep.grid` (tasks and
their ids), :mod:`~nnbound.sweep.execute` (one task, the code every executor runs),
:mod:`~nnbound.sweep.executors` / :mod:`~nnbound.sweep.local_pool` /
:mod:`~nnbound.sweep.ray_cluster` (where tasks run), :mod:`~nnbound.sweep.shards` (atomic
result files), :mod:`~nnbound.sweep.merge` and :mod:`~nnbound.sweep.report` (the table and
pages), :mod:`~nnbound.sweep.run` (the whole sweep).
"""

from nnbound.sweep.executors import ExecutorChoice, parse_executor
from nnbound.sweep.plan import SweepPlan, load_plan, plan_from_dict
from nnbound.sweep.run import SweepSummary, run_sweep

__all__ = [
    "ExecutorChoice",
    "SweepPlan",
    "SweepSummary",
    "load_plan",
    "parse_executor",
    "plan_from_dict",
    "run_sweep",
]
