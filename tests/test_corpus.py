"""The hostile-user corpus: malformed and awkward inputs over every command.

Every case must end as the error contract says (DESIGN.md, "The CLI"): the expected
exit code (2 bad usage or input, 1 a failed check), ONE line on stderr naming the
file, column, line or key, no traceback, no internal error, nothing left in the output
folder (no partial output, no temporary file), every input (tables, keys, ledger,
audit log) byte-for-byte unchanged, and no personal-data value or key in anything
printed.

Run as a test (``pytest tests/test_corpus.py``) or as a script against any tree
(``PYTHONPATH=TREE python tests/test_corpus.py``), which prints the clean count per
class: the before/after figures of issue 12 come from that.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import os
import secrets
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).parent / "data"
IDENTIFYING = ("user_id", "email", "full_name", "phone", "ip")
CANARY = "Zebulon Quarterman-7731"  # a personal-data value planted in bad inputs


@dataclass
class Workspace:
    root: Path
    inp: Path
    out: Path
    key_hex: str
    audit_key_hex: str
    secrets_seen: set[str] = field(default_factory=set)

    def env(self) -> dict[str, str]:
        return {"PRIVDL_KEY": "hex:" + self.key_hex, "PRIVDL_AUDIT_KEY": "hex:" + self.audit_key_hex}


@dataclass
class Case:
    name: str
    klass: str
    args: list[str]
    expect: tuple[int, ...] = (2,)
    env: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Outcome:
    case: Case
    code: int
    problems: list[str]

    @property
    def clean(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------------------
# the workspace: real inputs made with privdl itself
# --------------------------------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str | None]) -> tuple[int, str, str]:
    from privdl.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env}
    try:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # a tree whose main() exits instead of returning
                code = int(exc.code or 0)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return code, out.getvalue(), err.getvalue()


def _must(args: list[str], ws: Workspace) -> None:
    code, _out, err = _cli(args, dict(ws.env()))
    if code != 0:
        raise RuntimeError(f"workspace set-up failed: privdl {' '.join(args[:2])}: {err.strip()}")


def build_workspace(root: Path) -> Workspace:
    import numpy as np
    import pandas as pd

    inp, out = root / "in", root / "out"
    inp.mkdir()
    out.mkdir()
    ws = Workspace(root, inp, out, secrets.token_hex(32), secrets.token_hex(32))
    ws.secrets_seen |= {ws.key_hex, ws.audit_key_hex}
    users = inp / "users.csv"
    shutil.copy(DATA / "users_small.csv", users)
    frame = pd.read_csv(users, dtype=str)
    for column in IDENTIFYING:
        ws.secrets_seen |= {v for v in frame[column] if isinstance(v, str) and len(v) >= 5}
    key = inp / "key.hex"
    key.write_text("hex:" + ws.key_hex + "\n")
    key.chmod(0o600)
    (inp / "afolder").mkdir()

    # bad tables
    lines = users.read_text().splitlines()
    (inp / "empty.csv").write_bytes(b"")
    (inp / "header_only.csv").write_text(lines[0] + "\n")
    (inp / "ragged.csv").write_text("\n".join([*lines[:5], lines[5] + ",extra,cells", *lines[6:20]]) + "\n")
    first = next(n for n, line in enumerate(lines) if n > 3 and "Berlin" in line)
    latin = "\n".join([*lines[:first], lines[first].replace("Berlin", "K\xf6ln"), *lines[first + 1 :]]) + "\n"
    (inp / "latin1.csv").write_bytes(latin.encode("latin-1"))
    (inp / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    whole = gzip.compress(users.read_bytes())
    (inp / "truncated.csv.gz").write_bytes(whole[: len(whole) // 2])
    (inp / "table.xyz").write_text(users.read_text())
    rows = [{"full_name": CANARY, "zip": {"nested": CANARY}, "age": 30}] * 4
    (inp / "objects.jsonl").write_text("\n".join(pd.Series(rows).map(lambda r: pd.io.json.ujson_dumps(r))) + "\n")
    pd.DataFrame({"full_name": [CANARY] * 6, "tags": [["a", "b"]] * 6, "age": range(6)}).to_parquet(inp / "lists.parquet")
    (inp / "dup_header.csv").write_text("age,age,zip\n30,31,10115\n40,41,10117\n")
    nan = frame.copy()
    nan.loc[3, "age"] = "NaN"
    nan.to_csv(inp / "nan_age.csv", index=False, quoting=csv.QUOTE_MINIMAL)

    # policies and hierarchies
    (inp / "syntax.toml").write_text("[policy\nk = 5\n")
    (inp / "qi_int.toml").write_text("[policy]\nquasi_identifiers = 5\nk = 5\n")
    (inp / "id_int.toml").write_text("[policy]\nidentifiers = 3\nquasi_identifiers = ['age']\nk = 5\n")
    (inp / "hier_garbage.toml").write_text(
        "[policy]\nquasi_identifiers = ['age', 'zip']\nk = 5\n[policy.hierarchies]\nzip = 42\n"
    )
    (inp / "k_text.toml").write_text("[policy]\nquasi_identifiers = ['age']\nk = 'five'\n")
    (inp / "unknown_qi.toml").write_text("[policy]\nquasi_identifiers = ['no_such_column']\nk = 5\n")
    (inp / "hier_bad.csv").write_bytes(b"\x00\x01\x02garbage;;;\n")

    # keys
    (inp / "junk.b64").write_text("base64:" + "QUJD" * 10 + "!!*#\n")
    (inp / "short.hex").write_text("hex:abcd\n")
    (inp / "empty.key").write_text("")
    for name in ("junk.b64", "short.hex", "empty.key"):
        (inp / name).chmod(0o600)

    # an audit log with one entry, a tampered copy, a garbage one, audit signing keys
    log = inp / "audit.jsonl"
    _must(["risk", users, "--qi", "age", "--qi", "sex", "--audit-log", log], ws)
    _must(["risk", users, "--qi", "age", "--audit-log", log], ws)
    entries = log.read_text().splitlines()
    tampered = entries[0].replace('"risk"', '"rizk"', 1)
    if tampered == entries[0]:
        tampered = entries[0][:-2] + ("0" if entries[0][-2] != "0" else "1") + entries[0][-1]
    (inp / "tampered.jsonl").write_text("\n".join([tampered, *entries[1:]]) + "\n")
    (inp / "garbage.jsonl").write_text("this is not an audit log\n{\n")
    _must(["audit", "keygen", "--out", inp / "akeys"], ws)
    _must(["audit", "checkpoint", log, "--signing-key", inp / "akeys" / "audit-signing.key", "-o", inp / "checkpoint.txt"], ws)
    (inp / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")

    # a ledger with a budget, and a file that is not one
    _must(["budget", "set", inp / "budget.db", "--dataset", "ds", "--epsilon", "1", "--delta", "1e-5"], ws)
    (inp / "notadb.db").write_text("not a database\n" * 50)

    # encrypted scoring material: keys, a model, a batch, scores
    from sklearn.linear_model import LogisticRegression

    from privdl.encrypted.models import export_linear_model

    features = ["age", "plays_week1"]
    x = frame[features].astype(float).to_numpy()
    y = (x[:, 1] > np.median(x[:, 1])).astype(int)
    export_linear_model(LogisticRegression().fit(x, y), inp / "model.json", columns=features)
    (inp / "garbage_model.json").write_text('{"kind": "nope"')
    _must(["he", "keygen", "--out", inp / "keys"], ws)
    (inp / "pubonly").mkdir()
    shutil.copy(inp / "keys" / "public.he", inp / "pubonly" / "public.he")
    _must(["he", "encrypt", users, "--keys", inp / "keys", "--columns", ",".join(features), "-o", inp / "users.he"], ws)
    _must(["he", "score", inp / "users.he", "--model", inp / "model.json", "--public", inp / "keys",
           "-o", inp / "scores.he"], ws)
    (inp / "garbage.he").write_bytes(secrets.token_bytes(4096))

    # privdl train: a config with public domains (nothing is charged before a refusal)
    (inp / "train.toml").write_text(
        "[train]\nepochs = 1\nbatch_size = 64\nseed = 1\n[encoder]\nfeatures = ['age', 'plays_week1']\n"
        "numeric_bounds = { age = [16, 90], plays_week1 = [0, 60] }\ncategories = { retained = [0, 1] }\n"
    )
    (inp / "train_key.toml").write_text("[train]\nepoch = 1\n")
    (inp / "train_type.toml").write_text("[train]\nepochs = 'one'\n")
    (inp / "train_syntax.toml").write_text("[train\nepochs = 1\n")
    return ws


# --------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------
def cases(ws: Workspace) -> list[Case]:
    i, o = ws.inp, ws.out
    u = str(i / "users.csv")
    key = ["--key-file", str(i / "key.hex")]
    anon = ["anonymize"]
    ok_tail = ["--id", "email", "--qi", "age", "--qi", "sex", "-k", "3", *key]

    def a(name: str, klass: str, *args: object, expect: tuple[int, ...] = (2,), env=None) -> Case:
        return Case(name, klass, [str(x) for x in args], expect, env or {})

    out_csv = o / "released.csv"
    c: list[Case] = [
        # ---- input files --------------------------------------------------------------
        a("anonymize missing input", "input", *anon, i / "nope.csv", "-o", out_csv, *ok_tail),
        a("anonymize input is a folder", "input", *anon, i / "afolder", "-o", out_csv, *ok_tail),
        a("anonymize unknown extension", "input", *anon, i / "table.xyz", "-o", out_csv, *ok_tail),
        a("anonymize empty file", "input", *anon, i / "empty.csv", "-o", out_csv, *ok_tail),
        a("anonymize header only", "input", *anon, i / "header_only.csv", "-o", out_csv, *ok_tail),
        a("anonymize ragged row", "input", *anon, i / "ragged.csv", "-o", out_csv, *ok_tail),
        a("anonymize latin-1 csv", "input", *anon, i / "latin1.csv", "-o", out_csv, *ok_tail),
        a("anonymize binary jsonl", "input", *anon, i / "binary.jsonl", "-o", o / "r.jsonl", *ok_tail),
        a("anonymize truncated csv.gz", "input", *anon, i / "truncated.csv.gz", "-o", out_csv, *ok_tail),
        a("anonymize jsonl object QI", "input", *anon, i / "objects.jsonl", "-o", o / "r.jsonl",
          "--qi", "zip", "--qi", "age", "--drop", "full_name", "-k", "2"),
        a("anonymize parquet list QI", "input", *anon, i / "lists.parquet", "-o", o / "r.parquet",
          "--qi", "tags", "--qi", "age", "--drop", "full_name", "-k", "2"),
        a("anonymize duplicate header", "input", *anon, i / "dup_header.csv", "-o", out_csv, "--qi", "age", "-k", "2"),
        a("anonymize sqlite missing table", "input", *anon, f"sqlite:///{i / 'budget.db'}?table=nope",
          "-o", out_csv, "--qi", "age", "-k", "2"),
        a("risk missing input", "input", "risk", i / "nope.csv", "--qi", "age"),
        a("risk empty file", "input", "risk", i / "empty.csv", "--qi", "age"),
        a("risk latin-1 csv", "input", "risk", i / "latin1.csv", "--qi", "age"),
        a("risk binary jsonl", "input", "risk", i / "binary.jsonl", "--qi", "age"),
        a("risk header only", "input", "risk", i / "header_only.csv", "--qi", "age"),
        # ---- options and policies -----------------------------------------------------
        a("anonymize unknown --qi", "options", *anon, u, "-o", out_csv, "--qi", "no_such", "-k", "3"),
        a("anonymize unknown --id", "options", *anon, u, "-o", out_csv, "--id", "no_such", *key),
        a("anonymize column with two roles", "options", *anon, u, "-o", out_csv, "--id", "age", "--qi", "age", *key),
        a("anonymize k=0", "options", *anon, u, "-o", out_csv, "--qi", "age", "-k", "0"),
        a("anonymize k negative", "options", *anon, u, "-o", out_csv, "--qi", "age", "-k", "-3"),
        a("anonymize t-closeness 1.5", "options", *anon, u, "-o", out_csv, "--qi", "age", "--sensitive",
          "retained", "--t-closeness", "1.5"),
        a("anonymize max-suppression 2", "options", *anon, u, "-o", out_csv, "--qi", "age", "--max-suppression", "2"),
        a("anonymize l-diversity 0", "options", *anon, u, "-o", out_csv, "--qi", "age", "--sensitive",
          "retained", "--l-diversity", "0"),
        a("anonymize hierarchy interval:abc", "options", *anon, u, "-o", out_csv, "--qi", "zip", "--hierarchy",
          "zip=interval:abc"),
        a("anonymize hierarchy file missing", "options", *anon, u, "-o", out_csv, "--qi", "zip", "--hierarchy",
          f"zip={i / 'nope.csv'}"),
        a("anonymize hierarchy file garbage", "options", *anon, u, "-o", out_csv, "--qi", "zip", "--hierarchy",
          f"zip={i / 'hier_bad.csv'}"),
        a("anonymize hierarchy without =", "options", *anon, u, "-o", out_csv, "--qi", "zip", "--hierarchy", "zip"),
        a("anonymize policy missing", "options", *anon, u, "-o", out_csv, "--policy", i / "nope.toml"),
        a("anonymize policy syntax error", "options", *anon, u, "-o", out_csv, "--policy", i / "syntax.toml"),
        a("anonymize policy qi integer", "options", *anon, u, "-o", out_csv, "--policy", i / "qi_int.toml"),
        a("anonymize policy identifiers integer", "options", *anon, u, "-o", out_csv, "--policy", i / "id_int.toml"),
        a("anonymize policy hierarchy garbage", "options", *anon, u, "-o", out_csv, "--policy",
          i / "hier_garbage.toml"),
        a("anonymize policy k text", "options", *anon, u, "-o", out_csv, "--policy", i / "k_text.toml"),
        a("anonymize policy unknown column", "options", *anon, u, "-o", out_csv, "--policy", i / "unknown_qi.toml"),
        a("anonymize unknown transform", "options", *anon, u, "-o", out_csv, "--id", "email:bogus", *key),
        a("anonymize unknown engine", "options", *anon, u, "-o", out_csv, "--qi", "age", "--engine", "bogus"),
        a("anonymize unknown algorithm", "options", *anon, u, "-o", out_csv, "--qi", "age", "--algorithm", "bogus"),
        a("anonymize strict with undeclared columns", "options", *anon, u, "-o", out_csv, "--strict", *ok_tail),
        a("anonymize policy cannot be met", "options", *anon, u, "-o", out_csv, "--qi", "age", "--qi", "zip",
          "--qi", "city", "--qi", "sex", "--drop", "email", "--drop", "full_name", "--drop", "phone",
          "--drop", "ip", "--drop", "user_id", "--drop", "birth_date", "--drop", "signup_date",
          "--sensitive", "retained", "--l-diversity", "3", "-k", "5000", "--max-suppression", "0", expect=(1,)),
        a("risk unknown --qi", "options", "risk", u, "--qi", "no_such"),
        a("risk max-risk 2", "options", "risk", u, "--qi", "age", "--max-risk", "2"),
        a("risk max-risk exceeded", "options", "risk", u, "--qi", "age", "--qi", "zip", "--max-risk", "0.01",
          expect=(1,)),
        # ---- keys -------------------------------------------------------------------------
        a("anonymize key env unset", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-env", "NO_SUCH_VAR_X"),
        a("anonymize key file missing", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-file",
          i / "nope.key"),
        a("anonymize key file junk base64", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-file",
          i / "junk.b64"),
        a("anonymize key file too short", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-file",
          i / "short.hex"),
        a("anonymize key file empty", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-file",
          i / "empty.key"),
        a("anonymize key file is a folder", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-file",
          i / "afolder"),
        a("anonymize key env junk", "keys", *anon, u, "-o", out_csv, "--id", "email", "--key-env", "BAD_KEY_X",
          env={"BAD_KEY_X": "base64:!!!notbase64***"}),
        a("anonymize audit key unset", "keys", *anon, u, "-o", out_csv, *ok_tail, "--audit-log", i / "audit.jsonl",
          env={"PRIVDL_AUDIT_KEY": None}),
        a("anonymize wrong audit key", "keys", *anon, u, "-o", out_csv, *ok_tail, "--audit-log", i / "audit.jsonl",
          env={"PRIVDL_AUDIT_KEY": "hex:" + "cd" * 32}, expect=(1, 2)),
        # ---- output paths -----------------------------------------------------------------
        a("anonymize output in missing folder", "outputs", *anon, u, "-o", o / "missing" / "r.csv", *ok_tail),
        a("anonymize output is a folder", "outputs", *anon, u, "-o", i / "afolder", *ok_tail),
        a("anonymize output unknown extension", "outputs", *anon, u, "-o", o / "r.xyz", *ok_tail),
        a("anonymize report in missing folder", "outputs", *anon, u, "-o", out_csv, *ok_tail, "--report",
          o / "missing" / "r.html"),
        a("anonymize report unknown extension", "outputs", *anon, u, "-o", out_csv, *ok_tail, "--report",
          o / "r.docx"),
        a("anonymize audit log in missing folder", "outputs", *anon, u, "-o", out_csv, *ok_tail, "--audit-log",
          o / "missing" / "a.jsonl"),
        a("anonymize audit log is garbage", "outputs", *anon, u, "-o", out_csv, *ok_tail, "--audit-log",
          i / "garbage.jsonl", expect=(1, 2)),
        a("anonymize audit log tampered", "outputs", *anon, u, "-o", out_csv, *ok_tail, "--audit-log",
          i / "tampered.jsonl", expect=(1, 2)),
        a("risk report in missing folder", "outputs", "risk", u, "--qi", "age", "--report", o / "missing" / "r.json"),
        a("risk audit log in missing folder", "outputs", "risk", u, "--qi", "age", "--audit-log",
          o / "missing" / "a.jsonl"),
        a("he keygen out is a file", "outputs", "he", "keygen", "--out", i / "users.csv"),
        a("he keygen out in missing folder", "outputs", "he", "keygen", "--out", o / "missing" / "deeper" / "keys"),
        a("he encrypt output in missing folder", "outputs", "he", "encrypt", u, "--keys", i / "keys", "--columns",
          "age", "-o", o / "missing" / "x.he"),
        a("he encrypt output is a folder", "outputs", "he", "encrypt", u, "--keys", i / "keys", "--columns", "age",
          "-o", i / "afolder"),
        a("he score output in missing folder", "outputs", "he", "score", i / "users.he", "--model", i / "model.json",
          "--public", i / "keys", "-o", o / "missing" / "s.he"),
        a("he score output is a folder", "outputs", "he", "score", i / "users.he", "--model", i / "model.json",
          "--public", i / "keys", "-o", i / "afolder"),
        a("he decrypt output in missing folder", "outputs", "he", "decrypt", i / "scores.he", "--keys", i / "keys",
          "-o", o / "missing" / "s.csv"),
        a("he decrypt output is a folder", "outputs", "he", "decrypt", i / "scores.he", "--keys", i / "keys",
          "-o", i / "afolder"),
        a("audit keygen out is a file", "outputs", "audit", "keygen", "--out", i / "users.csv"),
        a("audit checkpoint output in missing folder", "outputs", "audit", "checkpoint", i / "audit.jsonl",
          "--signing-key", i / "akeys" / "audit-signing.key", "-o", o / "missing" / "c.txt"),
        a("audit checkpoint output is a folder", "outputs", "audit", "checkpoint", i / "audit.jsonl",
          "--signing-key", i / "akeys" / "audit-signing.key", "-o", i / "afolder"),
        a("audit records output in missing folder", "outputs", "audit", "records", i / "audit.jsonl", "-o",
          o / "missing" / "r.csv"),
        a("audit records output is a folder", "outputs", "audit", "records", i / "audit.jsonl", "-o", i / "afolder"),
        a("budget report output in missing folder", "outputs", "budget", "report", i / "budget.db", "--dataset",
          "ds", "-o", o / "missing" / "b.html"),
        # ---- ledger -----------------------------------------------------------------------
        a("budget show missing ledger", "ledger", "budget", "show", i / "nope.db"),
        a("budget show not a database", "ledger", "budget", "show", i / "notadb.db"),
        a("budget show unknown dataset", "ledger", "budget", "show", i / "budget.db", "--dataset", "nope"),
        a("budget set negative epsilon", "ledger", "budget", "set", i / "budget.db", "--dataset", "ds2",
          "--epsilon", "-1", "--delta", "1e-5"),
        a("budget set delta above 1", "ledger", "budget", "set", i / "budget.db", "--dataset", "ds2",
          "--epsilon", "1", "--delta", "2"),
        a("budget set on not a database", "ledger", "budget", "set", i / "notadb.db", "--dataset", "ds2",
          "--epsilon", "1", "--delta", "1e-5"),
        a("budget set in missing folder", "ledger", "budget", "set", o / "missing" / "b.db", "--dataset", "ds2",
          "--epsilon", "1", "--delta", "1e-5"),
        a("budget report unknown dataset", "ledger", "budget", "report", i / "budget.db", "--dataset", "nope",
          "-o", o / "b.html"),
        a("budget set unknown accountant", "ledger", "budget", "set", i / "budget.db", "--dataset", "ds3",
          "--epsilon", "1", "--delta", "1e-5", "--accountant", "bogus"),
        # ---- encrypted scoring ------------------------------------------------------------
        a("he keygen unknown security", "encrypted", "he", "keygen", "--out", o / "k", "--security", "42"),
        a("he keygen into existing keys", "encrypted", "he", "keygen", "--out", i / "keys", expect=(1, 2)),
        a("he encrypt keys folder missing", "encrypted", "he", "encrypt", u, "--keys", i / "nokeys", "--columns",
          "age", "-o", o / "x.he"),
        a("he encrypt public-only keys", "encrypted", "he", "encrypt", u, "--keys", i / "pubonly", "--columns",
          "age", "-o", o / "x.he"),
        a("he encrypt unknown column", "encrypted", "he", "encrypt", u, "--keys", i / "keys", "--columns",
          "no_such", "-o", o / "x.he"),
        a("he encrypt text column", "encrypted", "he", "encrypt", u, "--keys", i / "keys", "--columns", "full_name",
          "-o", o / "x.he"),
        a("he encrypt NaN value", "encrypted", "he", "encrypt", i / "nan_age.csv", "--keys", i / "keys",
          "--columns", "age", "-o", o / "x.he"),
        a("he encrypt unknown packing", "encrypted", "he", "encrypt", u, "--keys", i / "keys", "--columns", "age",
          "--packing", "bogus", "-o", o / "x.he"),
        a("he encrypt zero workers", "encrypted", "he", "encrypt", u, "--keys", i / "keys", "--columns", "age",
          "--workers", "0", "-o", o / "x.he"),
        a("he encrypt latin-1 input", "encrypted", "he", "encrypt", i / "latin1.csv", "--keys", i / "keys",
          "--columns", "age", "-o", o / "x.he"),
        a("he score garbage batch", "encrypted", "he", "score", i / "garbage.he", "--model", i / "model.json",
          "--public", i / "keys", "-o", o / "s.he"),
        a("he score model missing", "encrypted", "he", "score", i / "users.he", "--model", i / "nope.json",
          "--public", i / "keys", "-o", o / "s.he"),
        a("he score model garbage", "encrypted", "he", "score", i / "users.he", "--model", i / "garbage_model.json",
          "--public", i / "keys", "-o", o / "s.he"),
        a("he score public missing", "encrypted", "he", "score", i / "users.he", "--model", i / "model.json",
          "--public", i / "nokeys", "-o", o / "s.he"),
        a("he score batch is a table", "encrypted", "he", "score", u, "--model", i / "model.json", "--public",
          i / "keys", "-o", o / "s.he"),
        a("he decrypt garbage scores", "encrypted", "he", "decrypt", i / "garbage.he", "--keys", i / "keys", "-o",
          o / "s.csv"),
        a("he decrypt with public-only keys", "encrypted", "he", "decrypt", i / "scores.he", "--keys",
          i / "pubonly", "-o", o / "s.csv"),
        a("he decrypt a batch, not scores", "encrypted", "he", "decrypt", i / "users.he", "--keys", i / "keys",
          "-o", o / "s.csv"),
        # ---- audit evidence ---------------------------------------------------------------
        a("audit verify missing log", "audit", "audit", "verify", i / "nope.jsonl"),
        a("audit verify tampered log", "audit", "audit", "verify", i / "tampered.jsonl", expect=(1,)),
        a("audit verify garbage log", "audit", "audit", "verify", i / "garbage.jsonl", expect=(1, 2)),
        a("audit verify wrong key", "audit", "audit", "verify", i / "audit.jsonl", env={"PRIVDL_AUDIT_KEY":
          "hex:" + "ef" * 32}, expect=(1,)),
        a("audit verify bad public key", "audit", "audit", "verify", i / "audit.jsonl", "--public-key", i / "bad.pem",
          "--checkpoint", i / "checkpoint.txt"),
        a("audit verify garbage checkpoint", "audit", "audit", "verify", i / "audit.jsonl", "--public-key",
          i / "akeys" / "audit-signing.pub", "--checkpoint", i / "users.csv", expect=(1, 2)),
        a("audit verify checkpoint of another log", "audit", "audit", "verify", i / "tampered.jsonl",
          "--public-key", i / "akeys" / "audit-signing.pub", "--checkpoint", i / "checkpoint.txt", expect=(1,)),
        a("audit checkpoint bad signing key", "audit", "audit", "checkpoint", i / "audit.jsonl", "--signing-key",
          i / "bad.pem", "-o", o / "c.txt"),
        a("audit checkpoint of a tampered log", "audit", "audit", "checkpoint", i / "tampered.jsonl",
          "--signing-key", i / "akeys" / "audit-signing.key", "-o", o / "c.txt", expect=(1,)),
        a("audit records of a tampered log", "audit", "audit", "records", i / "tampered.jsonl", "-o", o / "r.csv",
          expect=(1,)),
        a("audit records unknown extension", "audit", "audit", "records", i / "audit.jsonl", "-o", o / "r.docx"),
        a("audit erase-request missing log", "audit", "audit", "erase-request", "u123", "--log", i / "nope.jsonl"),
        a("audit keygen into existing keys", "audit", "audit", "keygen", "--out", i / "akeys", expect=(1, 2)),
        a("diff two tables", "audit", "diff", u, i / "latin1.csv"),
        a("diff a folder without a manifest", "audit", "diff", i / "afolder", i / "afolder"),
        a("audit erase-request --identifier without a key", "audit", "audit", "erase-request", "u123",
          "--identifier", "--log", i / "audit.jsonl"),
        a("audit erase-request --identifier no anonymization under the key", "audit", "audit", "erase-request",
          "u123", "--identifier", *key, "--log", i / "audit.jsonl"),
        a("audit erase-request key without --identifier", "audit", "audit", "erase-request", "u123", *key,
          "--log", i / "audit.jsonl"),
        # ---- privdl train -----------------------------------------------------------------
        *[
            a(f"train {name}", "train", "train", table, "--target", target, "--model", model, "--epsilon", eps,
              "--ledger", i / "budget.db", "--dataset-id", dataset, "-o", out, "--config", config, *extra,
              expect=expect)
            for name, table, target, model, eps, dataset, out, config, extra, expect in [
                ("missing input", i / "nope.csv", "retained", "logistic", "1", "ds", o / "m", i / "train.toml",
                 (), (2,)),
                ("empty file", i / "empty.csv", "retained", "logistic", "1", "ds", o / "m", i / "train.toml", (), (2,)),
                ("header only", i / "header_only.csv", "retained", "logistic", "1", "ds", o / "m", i / "train.toml",
                 (), (2,)),
                ("latin-1 csv", i / "latin1.csv", "retained", "logistic", "1", "ds", o / "m", i / "train.toml",
                 (), (2,)),
                ("unknown target", u, "no_such", "logistic", "1", "ds", o / "m", i / "train.toml", (), (2,)),
                ("bad model spec", u, "retained", "forest:3", "1", "ds", o / "m", i / "train.toml", (), (2,)),
                ("epsilon text", u, "retained", "logistic", "lots", "ds", o / "m", i / "train.toml", (), (2,)),
                ("epsilon negative", u, "retained", "logistic", "-1", "ds", o / "m", i / "train.toml", (), (2,)),
                ("config missing", u, "retained", "logistic", "1", "ds", o / "m", i / "nope.toml", (), (2,)),
                ("config syntax error", u, "retained", "logistic", "1", "ds", o / "m", i / "train_syntax.toml",
                 (), (2,)),
                ("config unknown key", u, "retained", "logistic", "1", "ds", o / "m", i / "train_key.toml", (), (2,)),
                ("config wrong type", u, "retained", "logistic", "1", "ds", o / "m", i / "train_type.toml", (), (2,)),
                ("model folder is a file", u, "retained", "logistic", "1", "ds", i / "users.csv", i / "train.toml",
                 (), (2,)),
                ("model folder in missing folder", u, "retained", "logistic", "1", "ds", o / "missing" / "m",
                 i / "train.toml", (), (2,)),
                ("model folder is a foreign folder", u, "retained", "logistic", "1", "ds", i / "keys",
                 i / "train.toml", (), (2,)),
                ("report unknown extension", u, "retained", "logistic", "1", "ds", o / "m", i / "train.toml",
                 ("--report", o / "r.docx"), (2,)),
                ("unknown dataset", u, "retained", "logistic", "1", "nope", o / "m", i / "train.toml", (), (1, 2)),
                ("budget exceeded", u, "retained", "logistic", "5", "ds", o / "m", i / "train.toml",
                 ("--report", o / "r.html"), (1,)),
            ]
        ],
        a("train audit key unset", "train", "train", u, "--target", "retained", "--model", "logistic",
          "--epsilon", "1", "--ledger", i / "budget.db", "--dataset-id", "ds", "-o", o / "m", "--config",
          i / "train.toml", "--audit-log", o / "a.jsonl", env={"PRIVDL_AUDIT_KEY": None}),
        a("diff missing file", "audit", "diff", i / "nope.json", i / "model.json"),
    ]
    return c


# --------------------------------------------------------------------------------------
# running a case and judging it
# --------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, str]:
    seen: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if rel.endswith(("-wal", "-shm")):
            continue  # SQLite's shared-memory index of a reader, not the data (the .db is compared)
        if path.is_file():
            seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{path.stat().st_mode & 0o777:o}"
        elif path.is_dir():
            seen[rel] = "dir"
    return seen


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_case(ws: Workspace, case: Case) -> Outcome:
    import time

    start = time.perf_counter()
    before = _snapshot(ws.inp)
    env: dict[str, str | None] = {**ws.env(), **case.env}
    code, out, err = _cli(case.args, env)
    problems: list[str] = []
    if code not in case.expect:
        problems.append(f"exit {code}, expected {'/'.join(map(str, case.expect))}")
    if code == 3 or "internal error" in err:
        problems.append("internal error")
    if "Traceback" in out + err:
        problems.append("traceback")
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    text = out + err
    leaked = [s for s in ws.secrets_seen | {CANARY} if s in text]
    if leaked:
        problems.append(f"{len(leaked)} data value(s) or key(s) printed")
    left = _leftovers(ws.out)
    if left:
        problems.append(f"left behind: {', '.join(left[:3])}")
    after = _snapshot(ws.inp)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        problems.append(f"inputs changed: {', '.join(changed[:3])}")
    # put things back so one case cannot spoil the next
    for entry in ws.out.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if os.environ.get("PRIVDL_CORPUS_TIMES"):
        print(f"{time.perf_counter() - start:6.2f} s  {case.name}", file=sys.__stderr__)
    return Outcome(case, code, problems)


def run_corpus(root: Path) -> Iterator[Outcome]:
    ws = build_workspace(root)
    for case in cases(ws):
        yield run_case(ws, case)


def summary(outcomes: list[Outcome]) -> str:
    total, clean = Counter(), Counter()
    for outcome in outcomes:
        total[outcome.case.klass] += 1
        clean[outcome.case.klass] += outcome.clean
    parts = [f"{k} {clean[k]}/{total[k]}" for k in total]
    n, ok = sum(total.values()), sum(clean.values())
    return f"{ok}/{n} cases clean ({'; '.join(parts)})"


# --------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------
def test_every_corpus_case_ends_as_the_contract_says(tmp_path, capsys) -> None:
    import pytest

    pytest.importorskip("tenseal")
    pytest.importorskip("sklearn")
    from tests.conftest import SESSION_KEYS

    ws = build_workspace(tmp_path)
    SESSION_KEYS.extend(bytes.fromhex(k) for k in (ws.key_hex, ws.audit_key_hex))  # the leak check greps for them
    outcomes = [run_case(ws, case) for case in cases(ws)]
    line = summary(outcomes)
    with capsys.disabled():
        print(f"\ncorpus: {line}")
    assert len(outcomes) >= 60
    bad = [f"{o.case.name}: {'; '.join(o.problems)}" for o in outcomes if not o.clean]
    assert not bad, f"{line}\n" + "\n".join(bad)


def test_main_registers_its_commands_once(capsys) -> None:
    from privdl.cli import app, main

    main(["--version"])
    groups = len(app.registered_groups) + len(app.registered_commands)
    main(["--version"])
    capsys.readouterr()
    assert len(app.registered_groups) + len(app.registered_commands) == groups


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        results = list(run_corpus(Path(tmp)))
    for result in results:
        if not result.clean:
            print(f"  [{result.case.klass}] {result.case.name}: {'; '.join(result.problems)}")
    print(summary(results))
    sys.exit(0 if all(r.clean for r in results) else 1)
