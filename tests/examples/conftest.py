import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The examples' graphs are small: op overhead dominates, and a second thread only adds
    # contention on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
