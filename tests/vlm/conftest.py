"""The vision-language tests run torch on one thread: their models are tiny, so two threads gain
little, and on a busy machine two spinning OpenMP threads make them several times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
