"""Sortable random ids: a millisecond timestamp then randomness, so keyset pagination by id
follows creation order and ids never collide across replicas."""

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(n: int, length: int) -> str:
    return "".join(_ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(length)))


def new_id(prefix: str) -> str:
    return f"{prefix}-{_b32(int(time.time() * 1000), 9)}{_b32(secrets.randbits(60), 12)}"
