import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from privdl import io
from privdl.errors import FormatError, InputError, UsageError


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "zip": ["01067", "10115", "80331"],
            "age": [31, 45, 27],
            "score": [0.5, 1.25, None],
            "city": ["Dresden", None, "Munich"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".csv.gz"])
def test_round_trip_every_format(tmp_path, frame, suffix):
    path = tmp_path / f"t{suffix}"
    io.write_table(frame, path)
    back = io.read_table(path)
    assert list(back.columns) == list(frame.columns)
    assert back["zip"].tolist() == ["01067", "10115", "80331"]  # leading zero kept
    assert back["age"].tolist() == [31, 45, 27]
    assert back["score"].iloc[1] == 1.25 and pd.isna(back["score"].iloc[2])
    assert pd.isna(back["city"].iloc[1])


def test_sqlite_table_and_query(tmp_path, frame):
    db = tmp_path / "users.db"
    io.write_table(frame, f"sqlite:///{db}?table=users")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    back = io.read_table(f"sqlite:///{db}?table=users")
    assert back["user_id"].tolist() == ["u1", "u2", "u3"]
    q = io.read_table(f"sqlite:///{db}", query="SELECT user_id FROM users WHERE age > 30")
    assert q["user_id"].tolist() == ["u1", "u2"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # read-only
    with pytest.raises(InputError, match="table 'nope' not found"):
        io.read_table(f"sqlite:///{db}?table=nope")
    with pytest.raises(UsageError):
        io.read_table(f"sqlite:///{db}")


def _db_with_another_table(tmp_path):
    db = tmp_path / "out.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE other (x INTEGER)")
    con.commit()
    con.close()
    return db


def test_sqlite_write_keeps_other_tables(tmp_path, frame):
    db = _db_with_another_table(tmp_path)
    io.write_table(frame, f"sqlite:///{db}?table=released")
    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert {"other", "released"} <= names


def test_sep_override_and_sniffing(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("a;b\n1;x\n2;y\n")
    assert io.read_table(path).columns.tolist() == ["a", "b"]
    assert io.read_table(path, sep=",").columns.tolist() == ["a;b"]
    piped = tmp_path / "p.txt"
    piped.write_text("a|b\n1|2\n")
    assert io.read_table(piped, sep="|")["b"].tolist() == [2]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b,c\n1,2,3\n4,5\n", "line 3 has 2 fields, expected 3"),
        ("a,b,c\n1,2,3\n4,5,6,7\n", "line 3 has 4 fields, expected 3"),
    ],
)
def test_ragged_rows_name_the_line_not_the_value(tmp_path, content, match):
    path = tmp_path / "r.csv"
    path.write_text(content.replace("4,5", "secret@x.org,5"))
    with pytest.raises(InputError, match=match) as info:
        io.read_table(path)
    assert "secret" not in str(info.value)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        io.read_table(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        io.read_table(empty)
    odd = tmp_path / "t.xlsx"
    odd.write_text("x")
    with pytest.raises(FormatError, match="unknown table format"):
        io.read_table(odd)
    bad_json = tmp_path / "t.jsonl"
    bad_json.write_text('{"a": 1}\n{"a": "secret@x.org"\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON") as info:
        io.read_table(bad_json)
    assert "secret" not in str(info.value)
    bad_parquet = tmp_path / "t.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet"):
        io.read_table(bad_parquet)
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n")
    with pytest.raises(InputError, match="more than once"):
        io.read_table(dup)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = tmp_path / "locked.csv"
    path.write_text("a\n1\n")
    path.chmod(0)
    with pytest.raises(InputError, match="not readable"):
        io.read_table(path)


def test_write_into_missing_folder_and_same_path(tmp_path, frame):
    with pytest.raises(InputError, match="output folder"):
        io.write_table(frame, tmp_path / "nope" / "x.csv")
    src = tmp_path / "in.csv"
    io.write_table(frame, src)
    with pytest.raises(UsageError, match="is the input file"):
        io.check_distinct_paths(src, tmp_path / "." / "in.csv")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), io.atomic_write(target, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


_WRITER = """
import sys, numpy as np, pandas as pd
from privdl.io import write_table
n = 3_000_000
frame = pd.DataFrame({"a": np.arange(n), "b": np.arange(n).astype(str)})
print("ready", flush=True)
write_table(frame, sys.argv[1])
"""


def test_kill_during_write_leaves_no_output(tmp_path):
    target = tmp_path / "big.csv"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    # wait until the temporary file exists, then kill the writer mid-write
    deadline = time.time() + 30
    while time.time() < deadline and not any(p.name.endswith(".privdl-tmp") for p in tmp_path.iterdir()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".big.csv.") and name.endswith(".privdl-tmp") for name in leftovers)


def test_fingerprint(tmp_path):
    from privdl.fingerprint import fingerprint_file

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    fp = fingerprint_file(path)
    assert fp == {"name": "f.bin", "sha256": hashlib.sha256(b"abc").hexdigest(), "bytes": 3}


def test_streamed_read_with_progress_matches(tmp_path, frame, monkeypatch):
    path = tmp_path / "t.csv"
    io.write_table(pd.concat([frame] * 1000, ignore_index=True), path)
    monkeypatch.setattr(io, "_PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(io, "_BLOCK", 4096)  # many blocks
    streamed = io.read_table(path, progress=True)
    pd.testing.assert_frame_equal(streamed, io.read_table(path))
    assert len(streamed) == 3000 and streamed["zip"].iloc[0] == "01067"


def test_columns_selection_and_dtype(tmp_path, frame):
    path = tmp_path / "t.csv"
    io.write_table(frame, path)
    assert io.read_table(path, columns=["age"]).columns.tolist() == ["age"]
    assert io.read_table(path, dtype={"age": str})["age"].tolist() == ["31", "45", "27"]
    with pytest.raises(InputError, match="column 'nope' not found"):
        io.read_table(path, columns=["nope"])


def test_duckdb_table_and_query(tmp_path, frame):
    duckdb = pytest.importorskip("duckdb")
    db = tmp_path / "users.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE users AS SELECT * FROM frame")
    con.close()
    back = io.read_table(f"duckdb:///{db}?table=users")
    assert back["zip"].tolist() == ["01067", "10115", "80331"]
    q = io.read_table(f"duckdb:///{db}", query="SELECT user_id FROM users WHERE age > 30")
    assert sorted(q["user_id"]) == ["u1", "u2"]
    with pytest.raises(InputError, match="table 'nope' not found"):
        io.read_table(f"duckdb:///{db}?table=nope")
    with pytest.raises(InputError, match="the query failed"):
        io.read_table(f"duckdb:///{db}", query="SELECT nope FROM users")


# ----------------------------------------------------------------------------- staging
def _stage_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(io.STAGE_PREFIX) or "privdl-tmp" in p.name]


def test_staged_outputs_appear_only_on_commit(tmp_path, frame):
    staging = io.StagedOutputs()
    csv_path, report = tmp_path / "out.csv.gz", tmp_path / "report.json"
    io.write_table(frame, staging.table(csv_path))  # the format still follows the extension
    staging.file(report).write_text("{}", encoding="utf-8")
    assert not csv_path.exists() and not report.exists()
    assert staging.commit() == [csv_path, report]
    assert io.read_table(csv_path)["zip"].tolist() == ["01067", "10115", "80331"]
    assert _stage_leftovers(tmp_path) == []


def test_staged_sqlite_table_keeps_the_other_tables(tmp_path, frame):
    db = _db_with_another_table(tmp_path)
    staging = io.StagedOutputs()
    io.write_table(frame, staging.table(f"sqlite:///{db}?table=released"))
    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert names == {"other"}  # not yet
    staging.commit()
    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert names == {"other", "released"} and _stage_leftovers(tmp_path) == []


def test_discard_leaves_the_old_output_and_no_temp(tmp_path, frame):
    target = tmp_path / "out.csv"
    target.write_text("old\n", encoding="utf-8")
    staging = io.StagedOutputs()
    io.write_table(frame, staging.table(target))
    folder = staging.folder(tmp_path / "keys")
    (folder / "a").write_bytes(b"x")
    staging.discard()
    assert target.read_text(encoding="utf-8") == "old\n"
    assert not (tmp_path / "keys").exists() and _stage_leftovers(tmp_path) == []


def test_commit_keeps_the_replaced_mode_and_never_widens(tmp_path):
    staging = io.StagedOutputs()
    kept, private = tmp_path / "kept.csv", tmp_path / "private.bin"
    kept.write_text("old\n", encoding="utf-8")
    kept.chmod(0o640)
    staging.file(kept).write_text("new\n", encoding="utf-8")
    secret = staging.file(private)
    secret.write_bytes(b"s")
    secret.chmod(0o600)
    staging.commit()
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text(encoding="utf-8") == "new\n"
    assert private.stat().st_mode & 0o777 == 0o600


def test_staged_folder_moves_its_files_into_an_existing_folder(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "notes.txt").write_text("mine", encoding="utf-8")
    staging = io.StagedOutputs()
    folder = staging.folder(keys)
    (folder / "public.he").write_bytes(b"p")
    staging.commit()
    assert sorted(p.name for p in keys.iterdir()) == ["notes.txt", "public.he"]
    assert _stage_leftovers(tmp_path) == []


def test_staging_checks_the_target_first(tmp_path):
    staging = io.StagedOutputs()
    with pytest.raises(InputError, match="does not exist"):
        staging.file(tmp_path / "nope" / "out.csv")
    with pytest.raises(InputError, match="is a folder"):
        staging.file(tmp_path)
    with pytest.raises(FormatError):
        staging.table(tmp_path / "out.xlsx")


# ---------------------------------------------------------------- the atomic writer family
def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(io.TEMP_SUFFIX))


def test_private_writer_gives_0600_even_over_a_wider_file(tmp_path):
    target = tmp_path / "key.bin"
    target.write_bytes(b"old")
    target.chmod(0o644)
    io.write_bytes(target, b"secret", private=True)
    assert target.stat().st_mode & 0o777 == 0o600 and target.read_bytes() == b"secret"
    with io.atomic_write_private(tmp_path / "new.key", "w") as fh:
        fh.write("k")
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert _temps(tmp_path) == []


def test_no_overwrite_refuses_an_existing_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "key"
    io.write_text(target, "first", overwrite=False)
    with pytest.raises(FileExistsError):
        io.write_text(target, "second", overwrite=False)
    assert target.read_text(encoding="utf-8") == "first" and _temps(tmp_path) == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), io.atomic_write(target, "w") as fh:
        fh.write("half")
        raise RuntimeError
    assert target.read_text(encoding="utf-8") == "old" and _temps(tmp_path) == []


def test_atomic_path_for_writers_that_need_a_path(tmp_path):
    target = tmp_path / "db.sqlite"
    with io.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(io.TEMP_SUFFIX)
        con = sqlite3.connect(tmp)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    assert sqlite3.connect(target).execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert _temps(tmp_path) == []


def test_folder_swap_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "model"
    with io.atomic_folder(target) as tmp:
        (tmp / "a").write_text("1", encoding="utf-8")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2", encoding="utf-8")
    with io.atomic_folder(target) as tmp:
        assert target.is_dir() and (target / "a").exists()  # the old one stays until the swap
        (tmp / "c").write_text("3", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left aside


def test_folder_swap_without_exchange_falls_back_to_rename_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("x", encoding="utf-8")
    with io.atomic_folder(target) as tmp:
        (tmp / "new").write_text("y", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_folder_swap_failure_or_refusal_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("x", encoding="utf-8")
    with pytest.raises(RuntimeError), io.atomic_folder(target) as tmp:
        (tmp / "half").write_text("y", encoding="utf-8")
        raise RuntimeError

    def refuse(path):
        raise UsageError(f"{path} is not ours")

    with pytest.raises(UsageError), io.atomic_folder(target, may_replace=refuse) as tmp:
        (tmp / "new").write_text("y", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_sweep_removes_stale_temps_and_restores_a_folder_left_aside(tmp_path):
    stale = tmp_path / f".out.csv.abc{io.TEMP_SUFFIX}"
    fresh = tmp_path / f".out.csv.def{io.TEMP_SUFFIX}"
    staged = tmp_path / f"{io.STAGE_PREFIX}0011.out.csv"
    for p in (stale, fresh, staged):
        p.write_text("x", encoding="utf-8")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(staged, (old, old))
    aside = tmp_path / ".model.privdl-old-1234"  # a swap killed between its two renames
    aside.mkdir()
    (aside / "meta.json").write_text("{}", encoding="utf-8")
    (tmp_path / "keep.csv").write_text("x", encoding="utf-8")
    removed = io.sweep_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, staged.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "keep.csv", "model"])
    assert (tmp_path / "model" / "meta.json").exists()


def test_a_killed_writers_staged_output_is_swept_by_the_next_one(tmp_path):
    """Issue 12 item 5: staged outputs carry their writer's PID, so a SIGKILLed
    operation's staged file or folder goes at the next write into that folder."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from privdl.io import StagedOutputs\n"
        "s = StagedOutputs()\n"
        "open(s.file(sys.argv[1] + '/out.csv'), 'w').write('partial')\n"
        "s.folder(sys.argv[1] + '/model')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 2 and all(n.startswith(io.STAGE_PREFIX) for n in left)
    assert all(io._temp_pid(n) is not None for n in left)
    staging = io.StagedOutputs()
    staged = staging.file(tmp_path / "other.csv")
    staged.write_text("x", encoding="utf-8")
    staging.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv"]
