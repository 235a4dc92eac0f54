"""Test setup: 8 virtual CPU devices (sharding tests) before JAX is imported anywhere, and one
XLA compilation cache shared by the `tailor-jax` subprocesses the tests start."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402  (after the flags above)

# Kill/resume, multihost and CLI tests start many processes that compile the same tiny programs
# (an uninterrupted run, the killed run, its resume). They share one persistent compilation cache,
# fresh per session, so a later process loads the executables an earlier one compiled: the same
# compiled code, so bitwise comparisons between the runs keep their meaning. The test process
# itself does not use it (it was configured at `import jax` above, before the variables were
# set): tests there read compiled memory analyses, and its own jit caches already share work.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="tailor-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
