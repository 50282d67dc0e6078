"""Privacy budgets: the per-dataset BudgetLedger and the PrivacyReport.

Nothing heavy is imported here; ``privdl.budget.ledger`` needs numpy and scipy only
(SQLAlchemy for PostgreSQL), ``privdl.budget.report`` loads matplotlib for its plot.
"""

from __future__ import annotations

__all__: list[str] = []
