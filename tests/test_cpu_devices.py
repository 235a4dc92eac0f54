"""One JAX CPU device per core (parallel.cpu), the platform-aware `auto` mesh and the CLI's overrides."""

import json
import os
import subprocess
import sys

import pytest

from tailor_jax import run as run_lib
from tailor_jax.cli import build_parser, main
from tailor_jax.errors import TailorError
from tailor_jax.parallel.cpu import auto_cpu_device_count, configure_cpu_devices
from tailor_jax.parallel.mesh import MeshConfig, auto_mesh_axes, create_mesh


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (12, 8), (64, 8)])
def test_auto_count_is_a_power_of_two_up_to_eight(cores, expected):
    assert auto_cpu_device_count(cores) == expected


def _devices_in_fresh_process(env: dict[str, str], before: str = "") -> dict:
    """Run configure_cpu_devices() first thing in a new Python; return what it set and what JAX shows."""
    code = (
        "import json, jax\n"
        "from tailor_jax.parallel import cpu\n"
        f"{before}\n"
        "try:\n"
        "    result = {'set': cpu.configure_cpu_devices(), 'devices': len(jax.devices())}\n"
        "except Exception as err:\n"
        "    result = {'error': f'{type(err).__name__}: {err}'}\n"
        "print(json.dumps(result))\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TAILOR_CPU_DEVICES", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code], env=base | {"JAX_PLATFORMS": "cpu"} | env,
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "env, before, expected",
    [
        ({}, "cpu.usable_cores = lambda: 6", {"set": 4, "devices": 4}),  # one per core, a power of two
        ({"TAILOR_CPU_DEVICES": "3"}, "", {"set": 3, "devices": 3}),  # the override, as given
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}, "", {"set": None, "devices": 5}),  # respected
        ({"JAX_NUM_CPU_DEVICES": "2"}, "cpu.usable_cores = lambda: 8", {"set": None, "devices": 2}),
        ({}, "jax.numpy.zeros(1)", {"set": None, "devices": 1}),  # JAX already started: left alone
    ],
)
def test_configure_cpu_devices(env, before, expected):
    assert _devices_in_fresh_process(env, before) == expected


def test_bad_device_count_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("TAILOR_CPU_DEVICES", "two")
    with pytest.raises(TailorError, match="TAILOR_CPU_DEVICES='two': give a positive number"):
        configure_cpu_devices()
    with pytest.raises(TailorError, match="must be >= 1"):
        configure_cpu_devices(0)


def test_auto_mesh_puts_cpu_devices_on_data():
    assert auto_mesh_axes("cpu") == {"data": -1, "fsdp": 1, "tensor": 1}
    assert auto_mesh_axes("gpu") == auto_mesh_axes("tpu") == {"data": 1, "fsdp": -1, "tensor": 1}
    mesh = create_mesh(MeshConfig(**auto_mesh_axes()))  # this process: 8 CPU devices (conftest)
    assert mesh.shape == {"data": 8, "fsdp": 1, "tensor": 1}
    # `single-device` takes one CPU device instead of refusing the other seven
    assert create_mesh(MeshConfig(data=1, fsdp=1, tensor=1)).devices.size == 1


def test_run_config_auto_preset_resolves_per_platform(tmp_path):
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}"])
    assert cfg.mesh_preset == "auto"
    assert run_lib.sft_config(cfg).mesh.sizes() == [-1, 1, 1]
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "mesh_preset=single-device"])
    assert run_lib.grpo_config(cfg).mesh.sizes() == [1, 1, 1]


def test_overrides_may_follow_an_option(tmp_path, capsys):
    # argparse alone stops collecting `key=value` at `--dry-run`; the CLI keeps them as overrides
    assert main(["run", "configs/quickstart.yaml", "--dry-run", f"run_dir={tmp_path}", "sft.steps=70"]) == 0
    printed = capsys.readouterr().out
    assert f"run_dir: {tmp_path}\n" in printed and "steps: 70\n" in printed
    with pytest.raises(SystemExit):
        main(["run", "configs/quickstart.yaml", "--dry-run", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert build_parser("run").parse_args(["run", "c.yaml", "a=1"]).overrides == ["a=1"]


def test_auto_mesh_batches_are_checked_in_the_plan(tmp_path):
    # this process has 8 CPU devices (conftest): `auto` is data 8, so 12 rows cannot split
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "sft.batch_size=12"])
    with pytest.raises(TailorError, match=r"multiple of the 8-way data parallelism of mesh .* on 8 CPU devices"):
        run_lib.plan(cfg)
    assert not any(tmp_path.iterdir())  # found before anything is written
    run_lib.plan(run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}"]))  # 24 rows: fine
