"""Test-session settings shared by every test module."""

import atexit
import logging
import os
import shutil
import tempfile

import pytest
import torch

# The tests use tiny tensors: one thread avoids OpenMP start-up and spin-wait costs, which on a
# shared 2-core machine made small steps over 30x slower than single-threaded ones.
torch.set_num_threads(1)

# The BraTS bundle keeps prepared cases in a cache folder shared between runs (``data_cache: disk``);
# the tests' runs, and the commands they start, keep theirs in a folder of their own, not the user's.
os.environ["CGGM_SEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="cggm-seg-test-cache-")
atexit.register(shutil.rmtree, os.environ["CGGM_SEG_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Each test leaves the root logger's handlers as it found them.

    A bundle run configures logging from the bundle's ``logging.conf``: a handler on the
    ``sys.stderr`` of that moment, which under ``capsys`` is closed once the test ends; a later
    test's warning then prints "--- Logging error ---" into its own captured output.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory):
    """The project built as a wheel and installed in a fresh venv outside the checkout (one per session)."""
    from installed_wheel import install_wheel

    return install_wheel(tmp_path_factory.mktemp("wheel"))
