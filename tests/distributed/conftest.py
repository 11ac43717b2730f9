import os
import tempfile

import pytest
import torch

from graphattn import distributed as gd
from tests.distributed import dist_cases  # spawned ranks import it by this name (the parent's sys.path)


@pytest.fixture(scope="session")
def dist_results():
    """``get(world, plan="default")``: every rank's saved results of :func:`dist_cases.worker`,
    one spawn of ``world`` gloo processes per world size for the whole session (the ``keys``
    plan, which only the slow tests use, in a spawn of its own)."""
    cache = {}

    def get(world: int, plan: str = "default"):
        keys = plan == "keys"
        if (world, keys) not in cache:
            plans = ["keys"] if keys else dist_cases.DEFAULT_PLANS
            with tempfile.TemporaryDirectory(prefix="graphattn-test-") as tmp:
                gd.spawn(dist_cases.worker, world, tmp, plans, timeout_s=60, deadline_s=600)
                cache[world, keys] = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
        return cache[world, keys]

    return get
