import pytest
import torch

# Small ops run fastest on one thread, and CI machines may be shared.
torch.set_num_threads(1)


@pytest.fixture
def digits64():
    """A small float64 slice of digits: 200 train, 100 test examples."""
    from surfacekit.data import load_data

    d = load_data({"name": "digits", "train_size": 200, "test_size": 100})
    return d.to("cpu", torch.float64)
