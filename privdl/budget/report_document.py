"""The Markdown / HTML sections of a :class:`~privdl.budget.report.PrivacyReport`.

Rendering lives apart from the value: this module turns a report into a
:class:`privdl.render.Document` (and its plain-words statement) and draws its plots;
the report itself holds only data. It reads the report's fields by name and imports
nothing from :mod:`privdl.budget.report`, so the value never depends on how it is shown.

Example:
    >>> from privdl.budget import report_document
    >>> doc = report_document.document(report, figures=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["document", "statement"]

_ACCOUNTANTS = {"prv": "PRV (privacy loss random variable)", "rdp": "RDP (Rényi DP)"}

_PARAMETER_LABELS = {
    "noise_multiplier": "noise multiplier (sigma)",
    "max_grad_norm": "clipping norm (C)",
    "sample_rate": "sampling rate (q)",
    "target_epsilon": "target epsilon",
    "n_samples": "training records",
    "batch_size": "expected batch size",
}


def _g(value: Any) -> str:
    return "?" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def statement(report: Any) -> str:
    """The privacy statement of a report in plain words (its first paragraph)."""
    acc = _ACCOUNTANTS.get(report.accountant, report.accountant)
    t = report.training
    if report.scope == "run" and t is not None:
        mech = (
            f"DP-SGD with Poisson sampling (sampling rate q={_g(t.sample_rate)}), "
            f"per-example gradients clipped to norm C={_g(t.max_grad_norm)} and "
            f"Gaussian noise with multiplier sigma={_g(t.noise_multiplier)}, "
            f"over {t.steps} steps ({_g(t.epochs)} epochs)"
        )
        what = "This training run"
    else:
        mech = f"the composition of all {len(report.runs)} DP-SGD runs charged to the dataset"
        what = f"Dataset {report.dataset_id!r}"
    unit = report.privacy_unit
    search = _search_item(report)
    if search is not None and report.scope == "run":
        what = f"This model, the best of {search} each trained by the mechanism below,"
    if unit.method in ("user-level DP-SGD", "user-level budget"):
        level = "user-level"
        adjacency = (
            "Privacy unit: one person (user) with all their records"
            + (f" (at most {unit.max_records_per_user} used per person)" if unit.max_records_per_user else "")
            + "; adjacency: add or remove one person with all their records (unbounded)."
        )
        if unit.method == "user-level DP-SGD" and t is not None:
            mech = mech.replace("Poisson sampling (sampling rate", "Poisson sampling of users (sampling rate").replace(
                "per-example gradients clipped", "each user's gradient clipped as one unit"
            )
    else:
        level = "record-level"
        adjacency = "Privacy unit: one record; adjacency: add or remove one record (unbounded)."
    text = (
        f"{what} satisfies {level} ({report.epsilon:.4g}, {report.delta:.3g})-differential privacy "
        f"for {mech}, by the {acc} accountant. {adjacency} Trust model: central DP, the party "
        f"that trains sees the raw records; the guarantee covers the trained weights "
        f"of the released model and of every intermediate model and checkpoint of "
        f"the run(s). The coverage statement lists what else is released and whether "
        f"DP covers it."
    )
    if unit.unit == "user" and unit.method == "group privacy":
        text += (
            f" With at most {unit.max_records_per_user} records per person, group "
            f"privacy gives user-level ({unit.epsilon:.4g}, {unit.delta:.3g})-DP."
        )
    if search is not None and report.scope == "run":
        text += (
            " The epsilon is the Papernot-Steinke bound of the whole search, every candidate "
            "and the DP selection score included."
        )
    return text


def _search_item(report: Any) -> str | None:
    """``"the search over N candidates"`` when the report covers a hyperparameter search."""
    for c in report.coverage:
        if c.item.startswith("the hyperparameter search over "):
            return c.item.replace("the hyperparameter search over ", "a random-count search over ") + ","
    return None


def document(report: Any, *, figures: bool = True) -> Any:
    """The report as a :class:`privdl.render.Document` (``figures=False`` skips plots)."""
    import privdl.render as r

    sections: list[Any] = [
        r.Section("Privacy statement", _statement_blocks(report)),
        r.Section("Parameters", [r.KeyValues(_parameters(report))]),
    ]
    if report.dataset is not None:
        sections.append(_ledger_section(report))
    if report.runs:
        sections.append(_runs_section(report))
    if report.coverage:
        sections.append(_coverage_section(report))
    if report.epochs:
        blocks: list[Any] = [
            r.Table(
                ["epoch", "validation metric (not covered by DP)", "epsilon"],
                [[e.epoch, e.metric, e.epsilon] for e in report.epochs],
            )
        ]
        if figures:
            blocks.append(r.Figure(_epoch_plot(report), "epsilon and validation metric per epoch"))
        sections.append(r.Section("Training progress", blocks))
    elif figures and len(report.runs) > 0:
        sections.append(
            r.Section(
                "Budget over time",
                [r.Figure(_runs_plot(report), "composed epsilon after each run")],
            )
        )
    if report.utility is not None:
        sections.append(_utility_section(report))
    if report.membership_inference is not None:
        sections.append(_membership_section(report))
    sections.append(
        r.Section(
            "Reproducibility",
            [
                r.KeyValues(sorted(report.versions.items())),
                r.Table(
                    ["noise multiplier", "sampling rate", "steps"],
                    [list(s) for s in report.history],
                ),
            ],
        )
    )
    from privdl.manifest import manifest_section

    sections.append(manifest_section(report.manifest))
    title = (
        "Privacy report: DP training run"
        if report.scope == "run"
        else f"Privacy report: dataset {report.dataset_id}"
    )
    return r.Document(title, sections, subtitle=f"created {report.created_at}")


def _statement_blocks(report: Any) -> list[Any]:
    import privdl.render as r

    search = _search_item(report)
    tuning = (
        f"Covered: {search.rstrip(',').replace('a random-count search', 'the search')} (hyperparameter "
        "tuning inside the guarantee). NOT covered: "
        if search is not None
        else "NOT covered: hyperparameter tuning (every trial on the same data spends "
        "budget of its own), "
    )
    units = "users" if report.privacy_unit.method == "user-level DP-SGD" else "records"
    blocks: list[Any] = [
        r.Paragraph(statement(report)),
        r.Note(
            f"Assumptions: {units} are sampled with Poisson sampling at rate q at every "
            "step, exactly as the accountant models it; the accountant's figure is an "
            f"upper bound on the privacy loss. {tuning}preprocessing fitted on "
            "the data unless it was done with DP, and any use of the data outside these "
            "runs.",
            kind="info",
        ),
    ]
    uncovered = [c.item for c in report.coverage if not c.covered]
    if uncovered:
        blocks.append(
            r.Note(
                "Released here or in the model folder but NOT covered by the DP guarantee "
                "(computed from personal data without noise): " + "; ".join(uncovered) + ".",
                kind="warning",
            )
        )
    if report.preprocessing:
        blocks.append(
            r.Note(
                "Preprocessing not covered by DP (learned from the training data): "
                + "; ".join(report.preprocessing),
                kind="warning",
            )
        )
    blocks += [r.Note(w, kind="warning") for w in report.warnings]
    return blocks


def _parameters(report: Any) -> list[tuple[str, Any]]:
    unit = report.privacy_unit
    rows: list[tuple[str, Any]] = [
        ("scope", report.scope),
        ("dataset", report.dataset_id or "—"),
        ("epsilon", report.epsilon),
        ("delta", report.delta),
        ("accountant", report.accountant),
        ("privacy unit", unit.unit),
    ]
    if unit.unit == "user":
        rows += [
            ("max records per user", unit.max_records_per_user),
            ("user-level epsilon", unit.epsilon),
            ("user-level delta", unit.delta),
            ("user-level guarantee by", unit.method or "group privacy"),
        ]
    if report.training is not None:
        for key, value in report.training.to_dict().items():
            if key == "replaced_modules":
                value = ", ".join(value) if value else "none"
            rows.append((_PARAMETER_LABELS.get(key, key.replace("_", " ")), value))
    return rows


def _ledger_section(report: Any) -> Any:
    import privdl.render as r

    d = report.dataset
    rows = [
        ("total budget (epsilon)", d.total_epsilon),
        ("delta", d.delta),
        ("spent before this run (composed)", d.spent_before),
        ("spent now (composed)", d.spent_after),
        ("naive sum of run epsilons", d.naive_sum),
        ("remaining", d.remaining),
    ]
    if report.scope == "dataset":
        rows = [x for x in rows if x[0] != "spent before this run (composed)"]
    return r.Section(
        "Budget ledger",
        [
            r.KeyValues(rows),
            r.Paragraph(
                "Spent budget is the composition of every run's accountant history "
                "on this dataset, recomputed for this report; it is tighter than "
                "the naive sum of the runs' epsilons."
            ),
        ],
    )


def _runs_section(report: Any) -> Any:
    import privdl.render as r

    header = ["run", "time (UTC)", "status", "model", "epsilon", "delta", "composed after", "steps"]
    rows = [
        [
            run.run_id[:12],
            run.created_at[:19].replace("T", " "),
            run.status,
            run.model_name or "—",
            run.epsilon,
            run.delta,
            run.composed_after,
            run.steps,
        ]
        for run in report.runs
    ]
    return r.Section("Runs", [r.Table(header, rows)])


def _coverage_section(report: Any) -> Any:
    import privdl.render as r

    return r.Section(
        "Coverage: what is released",
        [
            r.Table(
                ["item", "released in", "protection", "why"],
                [[c.item, ", ".join(c.released_in), c.protection, c.note] for c in report.coverage],
            ),
            r.Paragraph(
                "DP: released through the differentially private mechanism and "
                "counted in epsilon. Public: not computed from the training "
                "records. NOT covered: computed from personal data without noise. "
                "The exact training loss is neither saved nor reported (the "
                "trainer shows it live on its own progress bar only)."
            ),
        ],
    )


def _utility_section(report: Any) -> Any:
    import privdl.render as r

    u = report.utility
    return r.Section(
        "Utility",
        [
            r.Paragraph(
                "Not covered by DP: the private model's validation metric and the "
                "non-private baseline are computed without noise."
            ),
            r.KeyValues(
                [
                    ("metric", u.metric),
                    ("private model", u.private),
                    ("non-private baseline", u.baseline),
                    ("difference", u.difference),
                ]
            ),
        ],
    )


def _membership_section(report: Any) -> Any:
    import privdl.render as r

    m = report.membership_inference
    return r.Section(
        "Membership-inference audit",
        [
            r.Paragraph(
                "Loss-threshold attack: guess 'member' when a record's loss is "
                "below a threshold, on held-out training records (members) and "
                "records never trained on (non-members). AUC 0.5 and advantage 0 "
                "mean the attack does no better than guessing. The DP bound is "
                "the largest advantage any attack can have under the stated "
                "(epsilon, delta). An empirical audit can find leaks; it cannot "
                "prove their absence. Not covered by DP: these figures are "
                "computed without noise from the audit records, whose members "
                "are training records."
            ),
            r.KeyValues(
                [
                    ("attack AUC", m.auc),
                    ("attacker advantage (TPR - FPR)", m.advantage),
                    ("DP bound on advantage", m.dp_bound),
                    ("members / non-members", f"{m.n_members} / {m.n_non_members}"),
                ]
            ),
        ],
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _epoch_plot(report: Any) -> bytes:
    from privdl.render import figure_png

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    xs = [e.epoch for e in report.epochs]
    ax.plot(xs, [e.epsilon for e in report.epochs], marker="o", color="#0969da")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epsilon", color="#0969da")
    metrics = [e.metric for e in report.epochs]
    if any(v is not None for v in metrics):
        ax2 = ax.twinx()
        ax2.plot(xs, [math.nan if v is None else v for v in metrics], marker="s", color="#bf8700")
        ax2.set_ylabel("validation metric", color="#bf8700")
    fig.tight_layout()
    return figure_png(fig)


def _runs_plot(report: Any) -> bytes:
    from privdl.render import figure_png

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    xs = list(range(1, len(report.runs) + 1))
    ax.step(
        xs,
        [run.composed_after for run in report.runs],
        where="post",
        marker="o",
        label="composed (accountant)",
    )
    naive = []
    total = 0.0
    for run in report.runs:
        total += run.epsilon_at_dataset_delta
        naive.append(total)
    ax.step(xs, naive, where="post", linestyle="--", label="naive sum")
    if report.dataset is not None:
        ax.axhline(report.dataset.total_epsilon, color="#cf222e", label="budget")
    ax.set_xlabel("run")
    ax.set_ylabel(f"epsilon at delta={report.delta:.3g}")
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)
