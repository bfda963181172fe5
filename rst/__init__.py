"""Reference System Time: a virtual budget clock charged from versioned timing tables.

``budget_kind=rst`` spends the budget in *reference* seconds: each unit of work a run does
(forward+backward over some number of active layers, forward-only scoring, Hessian
estimation, an optimizer step) is charged the time it took on a reference device, looked up
in a table under ``rst/tables/``. Runs on different hardware or implementations then get the
same budget of work. ``python -m rst.measure`` writes a table for your own device.
"""

from rst.clock import RSTClock
from rst.table import RSTTable, arch_hash, device_name, find_table, load_table

__all__ = ["RSTClock", "RSTTable", "arch_hash", "device_name", "find_table", "load_table"]
