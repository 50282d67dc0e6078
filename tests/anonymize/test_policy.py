import pytest

from privdl.anonymize.policy import IdentifierRule, Policy
from privdl.errors import InputError, PolicyError


def test_identifier_forms_normalize_to_rules():
    p = Policy(identifiers=["email", "phone:mask:keep_last=2", IdentifierRule("ip", "drop")])
    assert [(r.column, r.transform) for r in p.identifiers] == [
        ("email", "pseudonymize"),
        ("phone", "mask"),
        ("ip", "drop"),
    ]
    assert p.identifiers[1].options["keep_last"] == 2
    q = Policy(identifiers={"email": {"transform": "encrypt", "normalize": "email"}, "name": "pseudonymize"})
    assert q.identifiers[0].options["normalize"] == "email"


def test_policy_is_frozen():
    p = Policy(identifiers=["email"])
    with pytest.raises(AttributeError):
        p.k = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.identifiers[0].options["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"identifiers": ["email"], "drop": ["email"]}, "column 'email' has two roles"),
        ({"quasi_identifiers": ["age", "age"], "k": 2}, "listed twice"),
        ({"quasi_identifiers": ["age"]}, "no k"),
        ({"k": 5}, "no quasi-identifiers"),
        ({"quasi_identifiers": ["age"], "k": 0}, "k must be"),
        ({"quasi_identifiers": ["age"], "k": 2, "l": 2}, "sensitive"),
        ({"quasi_identifiers": ["age"], "k": 2, "sensitive": ["d"], "t": 1.5}, "0 < t"),
        ({"identifiers": ["email:hash"]}, "unknown transform 'hash'"),
        ({"identifiers": ["email:mask:normalize=email"]}, "does not apply"),
        ({"identifiers": ["d:shift_dates"]}, "needs by="),
        ({"quasi_identifiers": ["age"], "k": 2, "hierarchies": {"zip": "prefix"}}, "not a quasi-identifier"),
        ({"quasi_identifiers": ["age"], "k": 2, "algorithm": "magic"}, "algorithm"),
        ({"identifiers": ["email"], "max_suppression": 1.0}, "max_suppression"),
    ],
)
def test_inconsistent_policies_name_the_problem(kwargs, match):
    with pytest.raises(PolicyError, match=match):
        Policy(**kwargs)


def test_validate_names_missing_column():
    p = Policy(identifiers=["email", "d:shift_dates:by=user"])
    with pytest.raises(PolicyError, match="column 'user'"):
        p.validate(["email", "d"])
    with pytest.raises(PolicyError, match="column 'email' is named in the policy but not found"):
        p.validate(["d", "user"])


def test_from_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        """
quasi_identifiers = ["age", "zip"]
sensitive = ["diagnosis"]
drop = ["ip"]
[privacy]
k = 5
l = 2
[identifiers]
email = { transform = "pseudonymize", normalize = "email" }
phone = { transform = "mask", keep_last = 4 }
[hierarchies]
zip = "prefix"
"""
    )
    p = Policy.from_toml(path)
    assert (p.k, p.l, p.quasi_identifiers, p.drop) == (5, 2, ("age", "zip"), ("ip",))
    assert p.base_dir == tmp_path.resolve()
    assert p.get_params()["identifiers"][1] == {"column": "phone", "transform": "mask", "keep_last": 4}


def test_from_toml_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Policy.from_toml(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("k = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        Policy.from_toml(bad)
    unknown = tmp_path / "u.toml"
    unknown.write_text("kk = 3\n")
    with pytest.raises(PolicyError, match="unknown policy setting 'kk'"):
        Policy.from_toml(unknown)


def test_merge_adds_flags_to_a_file_policy():
    base = Policy(identifiers=["email"], quasi_identifiers=["age"], k=5)
    merged = base.merge(identifiers=["phone:mask"], quasi_identifiers=["zip"], k=10, l=None)
    assert merged.identifier_columns == ("email", "phone")
    assert merged.quasi_identifiers == ("age", "zip") and merged.k == 10
    with pytest.raises(PolicyError, match="two roles"):
        base.merge(drop=["email"])


def test_passthrough_and_subject():
    p = Policy(identifiers=["user_id", "email"], keep=["plays"])
    assert p.passthrough(["user_id", "email", "plays", "city"]) == ["city"]
    assert p.subject_column == "user_id"
