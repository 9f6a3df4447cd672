
import pytest
import torch

# One thread: small test models are overhead-bound, and on a busy 2-core machine two spinning OpenMP threads
# per process run 5-8x slower than one (measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses a private decode cache, so a user's cache is never touched or relied on."""
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
