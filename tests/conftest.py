"""Test setup: 8 virtual CPU devices (sharding tests) before JAX is imported anywhere, and one
XLA compilation cache per session, shared by the test process and the `tailor-jax` processes
the tests start."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Kill/resume, multihost and CLI tests start many processes that compile the same tiny programs
# (an uninterrupted run, the killed run, its resume), and tests in this process build the same
# programs again through fresh closures. With a persistent compilation cache, fresh for each
# session, only the first compiles; the others load its executable. That is the same compiled
# code, so bitwise comparisons between runs keep their meaning (and compiled memory analyses read
# the same). Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache between sessions, or
# JAX_ENABLE_COMPILATION_CACHE=false to compile everything.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="tailor-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
