"""Privacy budgets: accounting, the per-dataset BudgetLedger and the PrivacyReport.

* ``privdl.budget.accounting``: the accountant histories (``Segment``, ``History``), the
  one privacy-parameter validator, the RDP and PRV accountants and noise calibration;
* ``privdl.budget.ledger``: ``BudgetLedger``, the single source of truth for spent budget;
* ``privdl.budget.store``: the SQLite / PostgreSQL stores and the schema the ledger keeps its records in;
* ``privdl.budget.report``: ``PrivacyReport``.

budget/ imports only the base modules and ``privdl.audit``, never ``privdl.train``: the
trainer asks it for a noise multiplier, not the other way round. Nothing heavy is
imported here; accounting and the ledger need numpy and scipy only (SQLAlchemy for
PostgreSQL), the report loads matplotlib for its plot.
"""

from __future__ import annotations

__all__: list[str] = []
