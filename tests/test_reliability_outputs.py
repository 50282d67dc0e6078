"""Issue 12 item 1, output side: an output, report or checkpoint path in a missing
folder, in a folder that is a file or read-only, or naming an existing folder, is
exit 2 with one line naming the path, before any work (no input read, no key asked,
nothing created); the API writers raise the same InputError.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from privdl.errors import InputError

Bad = Callable[[Path, str], tuple[Path, str]]


def _missing(tmp: Path, name: str) -> tuple[Path, str]:
    return tmp / "nope" / name, "does not exist"


def _parent_is_file(tmp: Path, name: str) -> tuple[Path, str]:
    (tmp / "out").write_text("a file\n")
    return tmp / "out" / name, "is a file, not a folder"


def _is_folder(tmp: Path, name: str) -> tuple[Path, str]:
    (tmp / name).mkdir()
    return tmp / name, "is a folder"


def _read_only(tmp: Path, name: str) -> tuple[Path, str]:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / name, "is not writable"


BAD: list[Bad] = [_missing, _parent_is_file, _is_folder, _read_only]
IDS = ["missing-folder", "parent-is-file", "is-folder", "read-only"]


def _snapshot(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _one_line(err: str, path: Path, why: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert why in lines[0], lines[0]
    assert path.name in lines[0] or path.parent.name in lines[0], lines[0]


# ----------------------------------------------------------------------------- CLI
def _commands(tmp: Path, out: Path) -> dict[str, list[str]]:
    absent = str(tmp / "absent.csv")  # read first would say "does not exist" for it
    return {
        "anonymize -o": ["anonymize", absent, "-o", str(out), "--qi", "age", "-k", "2"],
        "anonymize --report": [
            "anonymize", absent, "-o", str(tmp / "ok.csv"), "--qi", "age", "-k", "2", "--report", str(out),
        ],
        "risk --report": ["risk", absent, "--qi", "age", "--report", str(out)],
        "audit checkpoint -o": [
            "audit", "checkpoint", absent, "--signing-key", str(tmp / "k.pem"), "-o", str(out),
        ],
        "audit records -o": ["audit", "records", absent, "-o", str(out)],
        "budget report -o": ["budget", "report", absent, "--dataset", "d", "-o", str(out)],
    }  # fmt: skip


NAMES = {
    "anonymize -o": "x.csv",
    "anonymize --report": "r.json",
    "risk --report": "r.md",
    "audit checkpoint -o": "audit.checkpoint",
    "audit records -o": "records.csv",
    "budget report -o": "r.html",
}


@pytest.mark.parametrize("bad", BAD, ids=IDS)
@pytest.mark.parametrize("command", list(NAMES))
def test_cli_bad_output_path(
    command: str,
    bad: Bad,
    tmp_path: Path,
    run_cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PRIVDL_AUDIT_KEY", raising=False)  # asked for first: a key error
    monkeypatch.chdir(tmp_path)
    out, why = bad(tmp_path, NAMES[command])
    before = _snapshot(tmp_path)
    try:
        code, stdout, stderr = run_cli(*_commands(tmp_path, out)[command])
    finally:
        if out.parent.name == "ro":
            out.parent.chmod(0o700)
    assert code == 2, stderr
    _one_line(stderr, out, why)
    assert "absent.csv" not in stderr  # checked before the input is read
    assert stdout == ""
    assert _snapshot(tmp_path) == before  # nothing created


# ----------------------------------------------------------------------------- API
def _write_table(path: Path) -> None:
    import pandas as pd

    from privdl.io import write_table

    write_table(pd.DataFrame({"a": [1]}), path)


def _write_records(path: Path) -> None:
    from privdl.audit.records import write_records

    write_records({"activities": [], "log": {"entries": 0}}, path)


def _render_save(path: Path) -> None:
    from privdl.render import Document, save

    save(Document(title="t", sections=[]), path, {"a": 1})


def _checkpoint_save(path: Path) -> None:
    from privdl.audit.checkpoint import Checkpoint

    Checkpoint(origin="o", size=0, root_hash=b"", time="t", text="x\n").save(path)


def _checkpoint_verified(path: Path) -> None:
    from privdl.audit.checkpoint import checkpoint_verified

    # the output is checked before the signing key is loaded (this one does not exist)
    checkpoint_verified(object(), signing_key=path.parent.parent / "absent.pem", output=path)


API = {
    "write_table": (_write_table, "x.csv"),
    "write_records": (_write_records, "records.json"),
    "render.save": (_render_save, "r.md"),
    "Checkpoint.save": (_checkpoint_save, "audit.checkpoint"),
    "checkpoint_verified": (_checkpoint_verified, "audit.checkpoint"),
}


@pytest.mark.parametrize("bad", BAD, ids=IDS)
@pytest.mark.parametrize("call", list(API))
def test_api_bad_output_path(call: str, bad: Bad, tmp_path: Path) -> None:
    fn, name = API[call]
    out, why = bad(tmp_path, name)
    before = _snapshot(tmp_path)
    try:
        with pytest.raises(InputError, match=why) as info:
            fn(out)
    finally:
        if out.parent.name == "ro":
            out.parent.chmod(0o700)
    assert "\n" not in str(info.value)
    assert _snapshot(tmp_path) == before


def test_good_paths_still_written(tmp_path: Path) -> None:
    _write_records(tmp_path / "records.json")
    _render_save(tmp_path / "r.md")
    _checkpoint_save(tmp_path / "c.checkpoint")
    assert all((tmp_path / n).is_file() for n in ("records.json", "r.md", "c.checkpoint"))


def test_read_only_folder_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root writes anywhere, so the read-only case is also checked with access() refusing
    import privdl.io

    monkeypatch.setattr(privdl.io.os, "access", lambda *_a, **_k: False)
    with pytest.raises(InputError, match=r"folder .* is not writable"):
        _write_records(tmp_path / "records.json")
    assert not (tmp_path / "records.json").exists()


def test_checkpoint_log_refuses_a_bad_output_before_reading_keys_or_log(tmp_path):
    """The API does what the CLI does: the output path first (the signing key and log
    named here do not even exist)."""
    from privdl.audit import checkpoint_log
    from privdl.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        checkpoint_log(
            tmp_path / "no-log.jsonl", signing_key=tmp_path / "no.key", output=tmp_path / "missing" / "cp"
        )
