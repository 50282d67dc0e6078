"""A Hypothesis state machine: append, checkpoint, crash, and apply each tampering operator.

Verification must pass exactly when nothing was tampered with after the last trusted
checkpoint (truncation below a checkpoint counts; truncation of entries no checkpoint
covers is undetectable by design) and, when it fails, name the right entry and kind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from privdl.audit import AuditLog, verify_audit_log
from privdl.audit.checkpoint import Checkpoint, sign_checkpoint
from privdl.errors import TamperDetectedError
from privdl.keys import Secret
from tests.audit.audit_tampering import OPERATORS, join


class AuditLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="privdl-audit-sm-"))
        self.key = Secret.generate()
        self.signer = Ed25519PrivateKey.generate()
        self.log = AuditLog(self.dir / "audit.jsonl", key=self.key, signing_key=self.signer, actor="machine")
        self.log.path.touch()  # an empty log verifies (0 entries)
        self.n = 0
        self.torn = 0
        self.checkpoint: Checkpoint | None = None
        self.tampered = False
        self.expected: tuple[int | None, set[str]] | None = None

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _lines(self) -> list[bytes]:
        return self.log.path.read_bytes().splitlines()

    def _repaired(self) -> None:
        if self.torn:  # the writer drops the torn tail and records that it did
            self.n += 1
            self.torn = 0

    # -- honest operations -----------------------------------------------------------
    @precondition(lambda self: not self.tampered)
    @rule(count=st.integers(1, 4), subjects=st.booleans(), batch=st.booleans())
    def append(self, count: int, subjects: bool, batch: bool) -> None:
        items = [
            {
                "event": "anonymize",
                "params": {"k": count, "i": i},
                "subjects": [f"tok{i}"] if subjects else None,
            }
            for i in range(count)
        ]
        if batch:
            self.log.append_many(items)
        else:
            for item in items:
                self.log.append(**item)
        self._repaired()
        self.n += count

    @precondition(lambda self: not self.tampered)
    @rule()
    def take_checkpoint(self) -> None:
        self.checkpoint = self.log.checkpoint()
        self._repaired()
        assert self.checkpoint.size == self.n

    @precondition(lambda self: not self.tampered and not self.torn)
    @rule(cut=st.integers(1, 200))
    def crash_mid_append(self, cut: int) -> None:
        partial = b'{"entry":{"actor":"machine","event":"anonymize","kid":"kid_0"}'[:cut]
        with self.log.path.open("ab") as fh:
            fh.write(partial)
        self.torn = len(partial)

    # -- tampering -------------------------------------------------------------------
    @precondition(lambda self: not self.tampered and not self.torn and self.n >= 1)
    @rule(name=st.sampled_from(sorted(OPERATORS)), data=st.data())
    def tamper(self, name: str, data: st.DataObject) -> None:
        op, smallest, where = OPERATORS[name]
        if self.n < smallest:
            return
        last = self.n - 1 if where == "not_last" else self.n
        j = data.draw(st.integers(1, last), label="entry")
        content, entry, kinds = op(self._lines(), j)
        self.log.path.write_bytes(content)
        self.tampered = True
        self.expected = (entry, kinds)

    @precondition(lambda self: not self.tampered and not self.torn and self.n >= 1)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        keep = data.draw(st.integers(0, self.n - 1), label="keep")
        self.log.path.write_bytes(join(self._lines()[:keep]))
        self.tampered = True
        if self.checkpoint is not None and self.checkpoint.size > keep:
            self.expected = (keep + 1, {"truncated"})
        else:
            self.expected = None  # undetectable without a checkpoint covering it
            self.n = keep

    @precondition(lambda self: not self.tampered and self.checkpoint is not None)
    @rule(how=st.sampled_from(["other_signer", "edited", "other_log"]))
    def tamper_checkpoint(self, how: str) -> None:
        cp = self.checkpoint
        assert cp is not None
        if how == "other_signer":
            fake = sign_checkpoint(
                origin=cp.origin,
                size=cp.size,
                root_hash=cp.root_hash,
                signing_key=Ed25519PrivateKey.generate(),
            )
            kinds = {"checkpoint_forged"}
        elif how == "edited":
            body, sig = cp.text.split("\n\n", 1)
            lines = body.split("\n")
            lines[1] = str(cp.size + 1)
            fake = Checkpoint.parse("\n".join(lines) + "\n\n" + sig)
            kinds = {"checkpoint_forged"}
        else:
            other = AuditLog(self.dir / "other.jsonl", key=self.key, signing_key=self.signer)
            other.append("risk")
            fake = other.checkpoint()
            # an empty log has no id to compare: the checkpoint's size gives it away
            kinds = {"checkpoint_replayed"} if self.n else {"truncated"}
        self.checkpoint = fake
        self.tampered = True
        self.expected = (None, kinds)

    @rule()
    def look_again(self) -> None:
        """Nothing happens (keeps the machine going once it has been tampered with)."""

    # -- the property ----------------------------------------------------------------
    @invariant()
    def verify_agrees(self) -> None:
        kwargs = {}
        if self.checkpoint is not None:
            kwargs = {"checkpoint": self.checkpoint, "public_key": self.signer.public_key()}
        if self.expected is None:
            result = verify_audit_log(self.log.path, key=self.key, **kwargs)
            assert result.entries == self.n
            assert result.incomplete_tail == self.torn
            return
        entry, kinds = self.expected
        try:
            verify_audit_log(self.log.path, key=self.key, **kwargs)
        except TamperDetectedError as exc:
            assert exc.kind in kinds, (exc.kind, kinds, str(exc))
            if entry is not None:
                assert exc.entry == entry, (exc.entry, entry, str(exc))
        else:
            raise AssertionError(f"tampering not detected; expected {self.expected}")


AuditLogMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAuditLogMachine = AuditLogMachine.TestCase
