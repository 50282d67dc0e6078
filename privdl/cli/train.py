"""`privdl train`: train a DP model from a released table and a config, without Python.

    privdl train released.parquet --target retained --model logistic --epsilon 2 \\
        --ledger budget.db --dataset-id retention-2026-11 -o model/ --report privacy.html

The table is read with :func:`privdl.read_table`, encoded by a
:class:`~privdl.TableEncoder` (domains from ``--policy``'s hierarchies and the
``[encoder]`` section; what has none is estimated with DP and charged, as in the API),
and trained by :class:`~privdl.PrivateTrainer` with the ``[train]`` options of
``--config``. Flags win over the config. The model folder (with its ``manifest.json``)
and the report are staged and appear only after a ``train.save`` audit entry naming
them; the run itself has its ``train`` entries (started, then final) as in the API.
A refused budget exits 1, bad input 2, each with one line.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import typer

from privdl.errors import InputError, UsageError

# [train] keys of train.toml -> the types they take (bool before int: True is an int)
_TRAIN_KEYS: dict[str, tuple[type, ...]] = {
    "target": (str,),
    "model": (str,),
    "epsilon": (int, float, str),
    "ledger": (str,),
    "dataset_id": (str,),
    "epochs": (int,),
    "batch_size": (int,),
    "max_grad_norm": (int, float),
    "delta": (int, float),
    "lr": (int, float),
    "optimizer": (str,),
    "loss": (str,),
    "accountant": (str,),
    "seed": (int,),
    "engine": (str,),
    "grad_sample_mode": (str,),
    "secure_mode": (bool,),
    "max_physical_batch_size": (int,),
    "domains": (str,),
    "domain_epsilon": (int, float),
    "device": (str,),
    "subjects": (str,),
    "privacy_unit": (str,),
    "max_records_per_user": (int,),
    "user_column": (str,),
}
_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}
_ENCODER_KEYS: dict[str, tuple[type, ...]] = {
    "features": (list,),
    "numeric_bounds": (dict,),
    "categories": (dict,),
}


def _read_config(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``([train], [encoder])`` of a train.toml, each key checked (one line naming it)."""
    if path is None:
        return {}, {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config {path} does not exist") from None
    except (OSError, UnicodeDecodeError):
        raise InputError(f"config {path} cannot be read") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config {path} is not valid TOML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(data) - {"train", "encoder"})
    if unknown:
        raise UsageError(f"config {path}: unknown section [{unknown[0]}] (use [train] and [encoder])")
    out = []
    for section, allowed in (("train", _TRAIN_KEYS), ("encoder", _ENCODER_KEYS)):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"config {path}: [{section}] must be a table")
        for key, value in table.items():
            if key not in allowed:
                raise UsageError(f"config {path}: unknown key {key!r} in [{section}]")
            types = allowed[key]
            ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            if not ok:
                names = " or ".join(_TYPE_WORDS[t] for t in types)
                raise UsageError(f"config {path}: [{section}] {key} must be {names}")
        out.append(dict(table))
    return out[0], out[1]


def _check_model_dir(out: Path) -> None:
    """Before any work: the model folder's parent exists and is writable, and the
    folder is new, empty or a privdl model (replaced then)."""
    from privdl.io import check_output_path

    check_output_path(out, what="model", folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / "signature.json").exists():
        raise UsageError(f"{out} exists and is not a privdl model folder")


def train(
    table: str = typer.Argument(
        ..., help="Training table: .csv .tsv .parquet .jsonl or sqlite:///db?table=T"
    ),
    target: str | None = typer.Option(None, "--target", help="The label column."),
    model: str | None = typer.Option(None, "--model", help="logistic or mlp:H1,H2 (e.g. mlp:64,32)."),
    epsilon: str | None = typer.Option(None, "--epsilon", help='Target epsilon of the run, or "remaining".'),
    ledger: str | None = typer.Option(
        None, "--ledger", help="Budget ledger: SQLite path or postgresql:// URL."
    ),
    dataset_id: str | None = typer.Option(None, "--dataset-id", help="The ledger's dataset id."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Model folder to write."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Model folder to write (same as -o)."),
    report: Path | None = typer.Option(None, "--report", help="Privacy report (.json, .md or .html)."),
    config: Path | None = typer.Option(None, "--config", help="train.toml: [train] and [encoder] options."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy TOML: domains from its hierarchies."),
    features: list[str] = typer.Option([], "--feature", help="Feature column (default: all). Repeatable."),
    max_grad_norm: float | None = typer.Option(None, "--max-grad-norm", help="Per-sample clipping norm C."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the data."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Expected (Poisson) batch size."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (reproducible runs; do not publish it)."),
    subjects: str | None = typer.Option(
        None, "--subjects", help="Pseudonym column: lets an erasure request find this run."
    ),
    privacy_unit: str | None = typer.Option(
        None, "--privacy-unit", help='"record" (default) or "user": protect a person with all their rows.'
    ),
    user_column: str | None = typer.Option(
        None, "--user-column", help="With --privacy-unit user: the column of user pseudonyms (not a feature)."
    ),
    max_records_per_user: int | None = typer.Option(
        None, "--max-records-per-user", help="With --privacy-unit user: rows kept per user (a random subset)."
    ),
    model_key_env: str | None = typer.Option(
        None, "--model-key-env", help="Variable holding the model signing key."
    ),
    model_key_file: Path | None = typer.Option(
        None, "--model-key-file", help="Model signing key file (0600)."
    ),
    audit_log: Path | None = typer.Option(
        None, "--audit-log", help="Append the run's entries to this audit log."
    ),
    audit_key_env: str = typer.Option(
        "PRIVDL_AUDIT_KEY", "--audit-key-env", help="Variable holding the audit key."
    ),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for text tables."),
    query: str | None = typer.Option(None, "--query", help="SQL query for a database input."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a logistic regression or an MLP with DP-SGD on a table; write the model folder."""
    from privdl import io
    from privdl.cli.options import cli_audit_log, load_key, report_target

    # cheap checks first: nothing is read, no key asked for and no budget touched on bad usage
    opts, enc_opts = _read_config(config)
    if output is not None and out_dir is not None and output != out_dir:
        raise UsageError("give the model folder once: -o/--output or --out-dir")
    folder = output if output is not None else out_dir
    if folder is None:
        raise UsageError("give the model folder with -o/--output (or --out-dir)")
    flags = {
        "target": target,
        "model": model,
        "epsilon": epsilon,
        "ledger": ledger,
        "dataset_id": dataset_id,
        "max_grad_norm": max_grad_norm,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "subjects": subjects,
        "privacy_unit": privacy_unit,
        "user_column": user_column,
        "max_records_per_user": max_records_per_user,
    }
    opts.update({k: v for k, v in flags.items() if v is not None})
    for name, flag in (("target", "--target"), ("model", "--model"), ("epsilon", "--epsilon")):
        if opts.get(name) is None:
            raise UsageError(f"missing {flag} (or {name} in [train] of --config)")
    if (opts.get("ledger") is None) != (opts.get("dataset_id") is None):
        raise UsageError("give --ledger and --dataset-id together")
    if "engine" in opts and "grad_sample_mode" in opts:
        raise UsageError("give engine or grad_sample_mode in [train], not both")
    eps = _epsilon(opts.pop("epsilon"))
    from privdl.train.architectures import TabularModel

    spec = TabularModel.parse(str(opts.pop("model")))
    label = str(opts.pop("target"))
    subject_column = opts.pop("subjects", None)
    user_column = opts.pop("user_column", None)
    unit = opts.get("privacy_unit", "record")
    if unit not in ("record", "user"):
        raise UsageError('--privacy-unit must be "record" or "user"')
    if unit == "user" and user_column is None:
        raise UsageError("--privacy-unit user needs --user-column (the pseudonym column; or user_column in [train])")
    if unit == "user" and opts.get("max_records_per_user") is None:
        raise UsageError("--privacy-unit user needs --max-records-per-user (or max_records_per_user in [train])")
    if unit != "user" and (user_column is not None or opts.get("max_records_per_user") is not None):
        raise UsageError("--user-column and --max-records-per-user need --privacy-unit user")
    if "engine" in opts:
        opts["grad_sample_mode"] = opts.pop("engine")
    _check_model_dir(folder)
    if report is not None:
        report_target(report)
        io.check_distinct_paths(str(report), str(folder))
    the_policy = None
    if policy is not None:
        from privdl.anonymize.policy import Policy

        the_policy = Policy.from_toml(policy)
    key = load_key(model_key_env, model_key_file, required=False)
    log = cli_audit_log(audit_log, audit_key_env)

    from privdl.audit import operation
    from privdl.train.encoding import TableEncoder
    from privdl.train.trainer import PrivateTrainer

    frame = io.read_table(table, sep=sep, query=query)
    if len(frame) < 2:
        raise InputError(f"{table}: the table has {len(frame)} rows; training needs at least 2")
    if label not in frame.columns:
        raise InputError(f"{table}: no column {label!r} (the --target)")
    chosen = list(features) or enc_opts.get("features")
    if subject_column is not None and subject_column not in frame.columns:
        raise InputError(f"{table}: no column {subject_column!r} (the --subjects column)")
    if user_column is not None and user_column not in frame.columns:
        raise InputError(f"{table}: no column {user_column!r} (the --user-column)")
    encoder = TableEncoder(
        the_policy,
        features=chosen,
        numeric_bounds={k: tuple(v) for k, v in (enc_opts.get("numeric_bounds") or {}).items()} or None,
        categories=enc_opts.get("categories"),
        target=label,
        domains=str(opts.get("domains", "dp")),
        domain_epsilon=opts.get("domain_epsilon"),
    )
    trainer = PrivateTrainer(
        spec, epsilon=eps, encoder=encoder, audit_log=log, progress=sys.stderr.isatty(), **opts
    )
    before = _status(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(
                frame,
                target=label,
                subjects=None if subject_column is None else frame[subject_column],
                user_column=user_column,
            )
        finally:  # one line each, as every command prints them (no source location)
            for seen in dict.fromkeys(str(w.message) for w in caught):
                print(f"privdl: warning: {seen}", file=sys.stderr)
    # evidence first: the model folder and the report appear once their entry is written
    params = {"run_id": trainer.run_id_, "manifest_sha256": trainer.manifest_.sha256(), "model": str(spec)}
    people = None if subject_column is None else frame[subject_column]
    with operation(log, "train.save", params=params, subjects=people) as op:
        trainer.save(op.stage(folder, folder=True), key=key)
        if report is not None:
            trainer.report(ledger_before=before, ledger_after=_status(trainer)).save(op.stage(report))
    _print(trainer, spec, folder, report, as_json)


def _epsilon(value: Any) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "remaining":
        return "remaining"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError('--epsilon must be a positive number or "remaining"') from None


def _status(trainer: Any) -> Any:
    """The dataset's budget status in the trainer's ledger, or None without one."""
    if trainer.ledger is None:
        return None
    from privdl.train.run import open_ledger

    led = trainer.ledger_ if trainer.ledger_ is not None else open_ledger(trainer.ledger)
    if trainer.dataset_id not in led.datasets():
        return None
    return led.status(trainer.dataset_id)


def _print(trainer: Any, spec: Any, folder: Path, report: Path | None, as_json: bool) -> None:
    status = _status(trainer)
    result = {
        "model": str(spec),
        "epsilon": trainer.epsilon,
        "delta": trainer.delta_,
        "privacy_unit": trainer.privacy_unit,
        "dataset_id": trainer.dataset_id,
        "ledger_spent": None if status is None else status.spent,
        "ledger_total": None if status is None else status.epsilon,
        "run_id": trainer.run_id_,
        "model_folder": str(folder),
        "report": None if report is None else str(report),
        "manifest_sha256": trainer.manifest_.sha256(),
        "reproducibility": dict(trainer.manifest_.reproducibility),
    }
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    ledger = (
        f"; ledger {status.spent:.3g} of {status.epsilon:.3g} spent on {trainer.dataset_id}"
        if status is not None
        else ""
    )
    extra = f", report {report}" if report is not None else ""
    print(
        f"trained {spec} with epsilon {trainer.epsilon:.3f} (delta {trainer.delta_:.1e}, per {trainer.privacy_unit}){ledger};"
        f" model {folder}{extra}; manifest sha256 {result['manifest_sha256'][:16]}"
    )


def register(app: typer.Typer) -> None:
    """Add `privdl train`."""
    app.command("train")(train)
