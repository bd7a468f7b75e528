"""One scheme for every random stream: integer seeds derived with ``numpy.random.SeedSequence``.

A stream is named by a path of integers below a root seed: ``derive_seed(seed, *key)`` hashes
``[seed, *key]`` with SeedSequence into a 63-bit integer for ``torch.Generator.manual_seed`` (or
numpy). SeedSequence mixes its whole entropy, so different paths give independent streams and
nearby seeds do not give nearby (or shared) streams, unlike ``seed + offset``.

For a population (``surfacekit.population``): member k of a job with seed s has the seed
``member_seed(s, k) = derive_seed(s, k)`` (stored in ``/members/seed``); its initialization draws
from ``torch.Generator(member seed)``, and each further stream of the member (``STREAMS``:
minibatch order, training noise, a method's auxiliary initialization, the statistics samples of
PRONG and K-FAC, the random start vectors of ``trainer.track_sharpness``) from
``derive_seed(member seed, STREAMS[name])``. A member's streams depend only on its own seed, so a
population equals its members trained separately.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = {"order": 1, "noise": 2, "aux_init": 3, "statistics": 4, "lanczos": 5}


def derive_seed(seed: int, *key: int) -> int:
    """The 63-bit seed of stream ``key`` below ``seed``: SeedSequence([seed, *key]), two 32-bit words.

    Raises:
        ValueError: a negative seed or key (SeedSequence takes non-negative entropy).
    """
    if int(seed) < 0 or any(int(k) < 0 for k in key):
        raise ValueError(f"seeds and stream keys must be non-negative, got {seed} and {key}")
    state = np.random.SeedSequence([int(seed), *(int(k) for k in key)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def member_seed(seed: int, member: int) -> int:
    """The seed of member ``member`` of a job with seed ``seed``: ``derive_seed(seed, member)``."""
    return derive_seed(seed, member)


def stream_generators(seeds: list[int], stream: str, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per member seed for the named stream (a key of ``STREAMS``).

    Raises:
        KeyError: an unknown stream name.
    """
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; choose one of {sorted(STREAMS)}")
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(s, STREAMS[stream]))
        gens.append(g)
    return gens
