"""Test-session settings shared by every test module."""

import torch

# The tests use tiny tensors: one thread avoids OpenMP start-up and spin-wait costs, which on a
# shared 2-core machine made small steps over 30x slower than single-threaded ones.
torch.set_num_threads(1)
