import pytest

from privdl import errors


def test_every_error_derives_from_the_root_and_a_builtin():
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.PolicyError, ValueError)
    assert issubclass(errors.KeyMissingError, LookupError)
    assert not issubclass(errors.KeyMissingError, KeyError)
    assert issubclass(errors.SecurityError, PermissionError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.PrivdlError)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.InputError, 2),
        (errors.UsageError, 2),
        (errors.PolicyError, 2),
        (errors.KeyMissingError, 2),
        (errors.SecurityError, 2),
        (errors.PolicyNotMetError, 1),
        (errors.TamperDetectedError, 1),
        (errors.RiskExceededError, 1),
    ],
)
def test_exit_codes(cls, code):
    assert cls("x").exit_code == code


def test_budget_error_carries_structured_fields():
    exc = errors.BudgetExceededError("over", requested=2.0, remaining=0.5, dataset_id="d")
    assert (exc.requested, exc.remaining, exc.dataset_id, exc.exit_code) == (2.0, 0.5, "d", 1)

