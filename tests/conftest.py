import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/hubcache.py

# One thread: on a 2-core machine two OpenMP threads slow down 5-30x whenever another process is busy.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
