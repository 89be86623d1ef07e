"""Test set-up: 8 virtual CPU devices for pmap tests, strict dtype promotion.

XLA_FLAGS must be set before JAX initialises its backends, hence at import of this file.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, subprocesses included (they
# inherit the environment): many tests compile the same paper-model step, and on two
# cores compilation is a good part of the suite's time. A hit is the same executable.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="dann_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# One OpenMP thread per process (subprocesses inherit it): the suite runs two workers on
# two cores, and OpenMP's spin-waiting threads then oversubscribe them. sklearn's t-SNE of
# 40 points took 22 s instead of 0.08 s beside a busy worker; torch and OpenBLAS use it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# glibc's malloc hands large freed blocks back to the kernel, so the temporaries XLA:CPU
# allocates at every execution (an evaluation's convolution buffers: about 100 MB) fault
# in again, page by page, at every call. Freed memory stays in the heap instead: the
# suite's page faults halve and two test files ran 9% faster. glibc reads these at
# process start: the xdist workers and every subprocess inherit them.
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**30))
os.environ.setdefault("MALLOC_TOP_PAD_", str(2**28))
# A subprocess that crashes (a segfault, an abort) prints every thread's Python stack to
# the stderr its test shows, instead of only a negative exit status.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
# No test reaches the internet: every download (dann_jax.data.download) goes to a closed
# port on this machine instead, and fails at once, unless a test serves files itself.
os.environ["DANN_DATA_MIRROR"] = "http://127.0.0.1:9"

import jax
import pytest

# Catch accidental dtype promotions (e.g. a bfloat16 gradient silently upcast).
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """Tiny MNIST and MNIST-M in the upstream formats (for the benchmark scripts)."""
    from tests.helpers import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture
def quiet_tfds():
    """No TFDS progress bars in test output."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)
    yield


@pytest.fixture
def no_internet(monkeypatch):
    """Downloads a test does not serve itself go to a closed local port, refused at once."""
    from dann_jax.data import download
    from tests.helpers import closed_port_url

    monkeypatch.setenv(download.MIRROR_ENV, closed_port_url())


# The longest files first, longest first (seconds on two cores beside another worker):
# xdist hands out whole files (`--dist loadfile`, in collection order with
# `--no-loadscope-reorder`), and a worker that starts a one-minute file last leaves the
# other idle for that minute. The rest keep their alphabetical order.
LONGEST_FILES = (
    "sharding_test.py",  # 115
    "train_test.py",  # 100
    "real_images_test.py",  # 95
    "feed_test.py",  # 75
    "multihost_test.py",  # 75
    "faults_run_test.py",  # 70
    "device_check_test.py",  # 65
    "select_test.py",  # 60
    "experiment_test.py",  # 60
    "own_data_test.py",  # 55
    "adaptation_test.py",  # 55
    "cli_test.py",  # 55
    "readme_test.py",  # 45
    "choose_test.py",  # 45
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
