"""Two local processes (4 virtual CPU devices each, CPU collectives over loopback) form one
8-device mesh through `initialize_distributed` and run the same sharded forward pass."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from tailor_jax.model import load_pretrained

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_form_one_mesh(tmp_path):
    hf_config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(tmp_path / "ckpt")
    tokens = np.random.default_rng(0).integers(0, 128, (4, 8)).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)

    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / "ckpt"), str(tmp_path / "tokens.npy"), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]

    model = load_pretrained(tmp_path / "ckpt")
    expected = np.asarray(model(jnp.asarray(tokens))[0])
    for pid in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"logits_{pid}.npy"), expected, atol=1e-5, rtol=0)
    saved = load_pretrained(tmp_path / "saved")
    np.testing.assert_array_equal(np.asarray(saved.layers[1].attn.o_kernel.get_value()),
                                  np.asarray(model.layers[1].attn.o_kernel.get_value()))


def test_initialize_distributed_is_a_noop_or_a_clear_error_in_one_process(monkeypatch):
    import pytest

    from tailor_jax.errors import TailorError
    from tailor_jax.parallel import initialize_distributed

    for name in ("TAILOR_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "TAILOR_TPU_SLICE",
                 "MEGASCALE_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False
    assert initialize_distributed("127.0.0.1:1", num_processes=1, process_id=0) is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(TailorError, match="set JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        initialize_distributed()
    with pytest.raises(TailorError, match="process id 2 is out of range for 2 processes"):
        initialize_distributed(num_processes=2, process_id=2)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    calls = []  # a TPU slice launched by tpu_scripts: JAX reads the cluster from TPU metadata
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("TAILOR_TPU_SLICE", "1")
    assert initialize_distributed() is True and calls == [((), {})]
