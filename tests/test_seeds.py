"""The one seed scheme (surfacekit.seeds)."""

import numpy as np
import pytest
import torch

from surfacekit.seeds import STREAMS, derive_seed, member_seed, stream_generators


def test_member_seeds_follow_seed_sequence():
    state = np.random.SeedSequence([3, 7]).generate_state(2, dtype=np.uint32)
    assert member_seed(3, 7) == derive_seed(3, 7) == (int(state[0]) << 31) ^ int(state[1])
    assert 0 <= member_seed(3, 7) < 2**63


def test_streams_are_distinct_across_jobs_members_and_names():
    keys = [(), *[(v,) for v in STREAMS.values()]]
    seeds = {derive_seed(s, m, *key) for s in range(5) for m in range(20) for key in keys}
    assert len(seeds) == 5 * 20 * (1 + len(STREAMS))
    # neighbouring job seeds share no member seeds (seed + offset schemes do)
    assert not {member_seed(0, k) for k in range(100)} & {member_seed(1, k) for k in range(100)}


def test_stream_generators_are_per_member_and_reproducible():
    a = stream_generators([11, 12], "order")
    b = stream_generators([12], "order")
    draws = [torch.randint(0, 2**30, (4,), generator=g) for g in a]
    assert torch.equal(draws[1], torch.randint(0, 2**30, (4,), generator=b[0]))
    assert not torch.equal(draws[0], draws[1])
    noise = stream_generators([11], "noise")[0]
    assert not torch.equal(torch.randint(0, 2**30, (4,), generator=noise), draws[0])


def test_invalid_streams_raise():
    with pytest.raises(KeyError, match="unknown random stream 'init'"):
        stream_generators([1], "init")
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, 2)
