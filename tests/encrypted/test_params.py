from __future__ import annotations

import pytest

from privdl.encrypted.params import (
    INSECURE_LEVEL,
    MAX_COEFF_BITS,
    ParameterSet,
    choose_parameters,
    normalize_security,
    poly_depth,
)
from privdl.errors import SecurityError, UsageError


def test_linear_default_is_n8192_60_40_60():
    p = choose_parameters()
    assert p.poly_modulus_degree == 8192
    assert p.coeff_mod_bit_sizes == (60, 40, 60)
    assert p.scale_bits == 40 and p.security == "128"
    assert not p.relin_keys
    assert p.slots == 4096 and p.depth == 1


def test_deeper_models_get_larger_rings_within_the_bound():
    for depth in range(1, 8):
        p = choose_parameters(depth=depth)
        assert p.depth >= depth
        assert p.total_bits <= MAX_COEFF_BITS[p.poly_modulus_degree][128]
        assert p.relin_keys == (depth > 1)
    assert choose_parameters(depth=2).poly_modulus_degree == 8192
    assert choose_parameters(depth=3).poly_modulus_degree == 16384


@pytest.mark.parametrize("weak", [100, "100", 80, "tc100", 127])
def test_sub_128_bit_requests_are_refused(weak):
    with pytest.raises(SecurityError):
        choose_parameters(security=weak)


def test_over_the_bound_coefficients_are_refused():
    with pytest.raises(SecurityError, match="below 128-bit"):
        choose_parameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40, 40, 60))
    with pytest.raises(SecurityError):
        ParameterSet(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 40, 60)).check()


def test_small_scale_is_refused():
    with pytest.raises(SecurityError, match="scale"):
        choose_parameters(scale_bits=20)


def test_insecure_level_only_by_name_warns_once_and_is_recorded(monkeypatch):
    import privdl.encrypted.params as params

    monkeypatch.setattr(params, "_warned_insecure", False)
    with pytest.warns(UserWarning, match="insecure-100"):
        p = choose_parameters(security=INSECURE_LEVEL, scale_bits=25)
    assert p.security == INSECURE_LEVEL and p.insecure
    assert ParameterSet.from_dict(p.to_dict()) == p
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_parameters(security=INSECURE_LEVEL)  # warns once per process


def test_stronger_levels_choose_larger_rings():
    assert normalize_security(192) == "192"
    p = choose_parameters(security=192)
    assert p.total_bits <= MAX_COEFF_BITS[p.poly_modulus_degree][192]
    assert p.poly_modulus_degree == 16384


def test_unknown_level_is_a_usage_error():
    with pytest.raises(UsageError):
        normalize_security("strong")


def test_poly_depth_matches_tenseal():
    import tenseal as ts

    for degree in (1, 2, 3, 4):
        levels = poly_depth(degree)
        n = 8192 if 120 + 40 * levels <= 218 else 16384
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=[60] + [40] * levels + [60])
        ctx.global_scale = 2**40
        vec = ts.ckks_vector(ctx, [0.5, -0.25])
        vec.polyval([0.1] * (degree + 1))  # enough levels: no "scale out of bounds"
        if levels > 1:
            small = ts.context(
                ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60] + [40] * (levels - 1) + [60]
            )
            small.global_scale = 2**40
            with pytest.raises(ValueError):
                ts.ckks_vector(small, [0.5, -0.25]).polyval([0.1] * (degree + 1))
