"""CKKS parameter sets and the security check.

A parameter set is chosen from the multiplicative depth a model needs: a linear score
needs one level (``N=8192``, moduli ``[60, 40, 60]``); a polynomial activation adds the
levels its degree needs. The total coefficient-modulus bit count must stay within the
Homomorphic Encryption Standard's bound for the ring dimension ``N`` at the requested
security level (classical, ternary secret), e.g. 218 bits at ``N=8192`` for 128-bit
security. Anything weaker is refused unless asked for by name
(``security="insecure-100"``), which warns once and is recorded in every header.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

from privdl.errors import InputError, SecurityError, UsageError

__all__ = [
    "INSECURE_LEVEL",
    "MAX_COEFF_BITS",
    "ParameterSet",
    "choose_parameters",
    "poly_depth",
]

#: HE Standard (Albrecht et al. 2018), Table 1, ternary secret: max log2(q) per (N, level).
MAX_COEFF_BITS: dict[int, dict[int, int]] = {
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}
#: The only name under which a sub-128-bit request is accepted.
INSECURE_LEVEL = "insecure-100"
_LEVELS = (128, 192, 256)
_MIN_SCALE_BITS = 30
_warned_insecure = False


@dataclass(frozen=True)
class ParameterSet:
    """The CKKS parameters of a key set; recorded in every file made with it.

    Attributes:
        poly_modulus_degree: ring dimension ``N``; a ciphertext holds ``N/2`` slots (rows).
        coeff_mod_bit_sizes: bit sizes of the coefficient-modulus primes, special prime last.
        scale_bits: ``log2`` of the encoding scale.
        security: ``"128"``, ``"192"``, ``"256"`` or ``"insecure-100"``.
        encryption: ``"symmetric"`` (the data owner encrypts with the secret key; fastest)
            or ``"public-key"`` (anyone holding the public context can encrypt).
        relin_keys: whether the public context carries relinearization keys (needed for
            polynomial activations only).
        galois_keys: whether it carries Galois (rotation) keys: only for per-row packing
            of single, latency-bound queries (~17 MB; feature-major needs none).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40
    security: str = "128"
    encryption: str = "symmetric"
    relin_keys: bool = False
    galois_keys: bool = False

    @property
    def slots(self) -> int:
        """Rows packed into one ciphertext (``N/2``)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Rescales available: data primes after the first (the special prime excluded)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def insecure(self) -> bool:
        return self.security == INSECURE_LEVEL

    def check(self) -> None:
        """Refuse parameters below the requested security level.

        Raises:
            SecurityError: total coefficient bits over the HE Standard bound for ``N``,
                or scale below 2^30, without ``security="insecure-100"``.
            UsageError: malformed parameters.
        """
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_BITS:
            raise UsageError(f"poly_modulus_degree {n} is not supported; use one of {sorted(MAX_COEFF_BITS)}")
        if len(self.coeff_mod_bit_sizes) < 3:
            raise UsageError("coeff_mod_bit_sizes needs at least 3 primes (data, level, special)")
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise UsageError("every coefficient prime must have 20 to 60 bits")
        if self.encryption not in ("symmetric", "public-key"):
            raise UsageError(f"encryption must be 'symmetric' or 'public-key', not {self.encryption!r}")
        if self.insecure:
            return
        level = int(self.security)
        bound = MAX_COEFF_BITS[n][level]
        if self.total_bits > bound:
            raise SecurityError(
                f"CKKS parameters N={n} with {self.total_bits} coefficient bits are below "
                f"{level}-bit security (at most {bound} bits); use a larger N or fewer levels"
            )
        if self.scale_bits < _MIN_SCALE_BITS:
            raise SecurityError(
                f"scale 2^{self.scale_bits} is too small for reliable scores (at least "
                f"2^{_MIN_SCALE_BITS}); ask for security={INSECURE_LEVEL!r} to override"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterSet:
        try:
            return cls(
                poly_modulus_degree=int(data["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(int(b) for b in data["coeff_mod_bit_sizes"]),
                scale_bits=int(data["scale_bits"]),
                security=str(data["security"]),
                encryption=str(data.get("encryption", "symmetric")),
                relin_keys=bool(data.get("relin_keys", False)),
                galois_keys=bool(data.get("galois_keys", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed CKKS parameter set ({type(exc).__name__})") from None


def normalize_security(security: int | str) -> str:
    """Map a requested security level to its recorded name, refusing weak ones.

    Raises:
        SecurityError: a level below 128 bits that is not ``"insecure-100"`` by name.
    """
    global _warned_insecure
    if isinstance(security, str) and security.strip().lower() == INSECURE_LEVEL:
        if not _warned_insecure:
            warnings.warn(
                "CKKS security below 128 bits was asked for by name ('insecure-100'); "
                "it is recorded in every key, batch and score file",
                UserWarning,
                stacklevel=3,
            )
            _warned_insecure = True
        return INSECURE_LEVEL
    text = str(security).strip().lower().removeprefix("tc")
    try:
        level = int(text)
    except ValueError:
        raise UsageError(
            f"unknown security level {security!r}; use 128, 192, 256 or {INSECURE_LEVEL!r}"
        ) from None
    if level not in _LEVELS:
        raise SecurityError(
            f"a {level}-bit security level is refused; use 128, 192 or 256 "
            f"(or ask for {INSECURE_LEVEL!r} by name)"
        )
    return str(level)


def poly_depth(degree: int) -> int:
    """Levels TenSEAL's ``polyval`` consumes for a polynomial of ``degree``."""
    # measured on TenSEAL 0.3.18: 1 -> 1, 2-3 -> 2, 4-7 -> 3 (powers by squaring, then
    # one scalar product for the coefficients)
    return max(int(degree), 0).bit_length()


def choose_parameters(
    *,
    depth: int = 1,
    security: int | str = 128,
    scale_bits: int = 40,
    poly_modulus_degree: int | None = None,
    coeff_mod_bit_sizes: tuple[int, ...] | list[int] | None = None,
    encryption: str = "symmetric",
    relin_keys: bool | None = None,
    galois_keys: bool = False,
) -> ParameterSet:
    """The smallest parameter set with ``depth`` levels at ``security`` bits.

    Args:
        depth: multiplicative depth of the model (1 for a linear score).
        security: 128 (default), 192, 256, or ``"insecure-100"`` by name.
        scale_bits: log2 of the encoding scale (at least 30 unless insecure).
        poly_modulus_degree: force ``N`` (otherwise the smallest that fits).
        coeff_mod_bit_sizes: force the prime sizes (checked against the bound).
        encryption: ``"symmetric"`` or ``"public-key"``.
        relin_keys: force relinearization keys on or off (default: when depth > 1).
        galois_keys: add rotation keys for per-row packing (single queries only).

    Raises:
        SecurityError: the request is below the security level.
        UsageError: no supported ``N`` fits the depth.
    """
    if depth < 1:
        raise UsageError("depth must be at least 1")
    level = normalize_security(security)
    relin = depth > 1 if relin_keys is None else bool(relin_keys)
    # 60-bit outer primes: the first holds the integer part above the scale, the last
    # is the special (key-switching) prime.
    outer = 60
    if coeff_mod_bit_sizes is not None:
        bits = tuple(int(b) for b in coeff_mod_bit_sizes)
    else:
        bits = (outer, *([scale_bits] * depth), outer)
    if poly_modulus_degree is None:
        bound_level = 128 if level == INSECURE_LEVEL else int(level)
        fitting = [n for n in (8192, 16384, 32768) if sum(bits) <= MAX_COEFF_BITS[n][bound_level]]
        if not fitting:
            raise UsageError(f"no supported ring dimension holds {depth} levels at {level} bits")
        poly_modulus_degree = fitting[0]
    params = ParameterSet(
        poly_modulus_degree=int(poly_modulus_degree),
        coeff_mod_bit_sizes=bits,
        scale_bits=int(scale_bits),
        security=level,
        encryption=encryption,
        relin_keys=relin,
        galois_keys=bool(galois_keys),
    )
    params.check()
    if len(bits) - 2 < depth:
        raise UsageError(
            f"coeff_mod_bit_sizes {list(bits)} give {len(bits) - 2} levels; the model needs {depth}"
        )
    return params
