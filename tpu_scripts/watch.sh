#!/usr/bin/env bash
# Watch a tailor-jax run on a (spot/preemptible) TPU and bring it back after preemption.
set -euo pipefail

USAGE="Usage: watch.sh --name NAME --zone ZONE --project PROJECT --accelerator TYPE --run-dir DIR \\
           [create, setup and launch options] SUBCOMMAND CONFIG.yaml [key=value ...]

Every INTERVAL seconds, read the TPU's state (tpu-vm describe, or queued-resources describe with
--queued) and, when it is up, ask worker 0 about the run. Then:
  READY / ACTIVE, run going            nothing to do
  READY / ACTIVE, run exited 0         done: exit 0
  READY / ACTIVE, not set up           setup.sh steps, then launch.sh steps
  READY / ACTIVE, run not going        launch.sh steps with --restart (the run resumes from its
                                       last checkpoint in RUN_DIR)
  PREEMPTED, TERMINATED, SUSPENDING,   delete (without asking) and create again; the next checks
  SUSPENDED, FAILED, or NOT_FOUND      set it up and launch
  anything else (CREATING, WAITING_FOR_RESOURCES, PROVISIONING, ...)   wait
Only a run directory on gs:// (or data you --fetch back) survives the VM being recreated.

Options of create.sh: --accelerator, --runtime-version, --spot, --preemptible, --queued
Options of setup.sh:  --repo-url, --ref, --remote-dir, --python, --fetch
Options of launch.sh: --run-dir, --cache-dir, --env, SUBCOMMAND CONFIG.yaml [key=value ...]

Watch options:
  --interval SECONDS       Time between checks (default: 60)
  --max-checks N           Stop (exit 3) after N checks; 0 means no limit (default: 0)
  --max-relaunches N       Give up (exit 2) rather than recover more than N times (default: 3);
                           recreating the TPU or restarting a run that stopped counts, the first
                           start on a fresh TPU does not
  --max-failures N         Give up (exit 2) after N checks in a row where gcloud describe or ssh
                           to worker 0 failed (default: 10)
  --dry-run                Print the commands of one check and of a recovery, one per line
                           prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project accelerator runtime-version spot preemptible queued repo-url ref remote-dir python fetch run-dir cache-dir env interval max-checks max-relaunches max-failures dry-run" "$@"
require_target
require_create_flags
require_setup_flags
require_launch_flags
require_count interval "$INTERVAL"
require_count max-checks "$MAX_CHECKS"
require_count max-relaunches "$MAX_RELAUNCHES"
require_count max-failures "$MAX_FAILURES"
YES=1     # a preempted TPU is deleted without a prompt: nobody is there to answer it
RESTART=1 # a relaunch replaces whatever is left of the old run on each worker

if ((DRY_RUN)); then
  echo "# each check:"
  describe_state
  probe_run
  echo "# when the TPU is preempted, suspended or gone:"
  delete_tpu
  create_tpu
  echo "# when it is up but not set up, then when the run is not going:"
  setup_tpu
  launch_run
  exit 0
fi

checks=0      # checks done
relaunches=0  # recoveries done (recreate, or restart of a run that stopped)
failures=0    # checks in a row where describe or ssh failed
started=0     # the run has been started (or seen going) on the current TPU
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

count_relaunch() {
  ((relaunches < MAX_RELAUNCHES)) || die "$1, and --max-relaunches=$MAX_RELAUNCHES is used up; giving up"
  relaunches=$((relaunches + 1))
  note "$1: recovery $relaunches of $MAX_RELAUNCHES"
}

# Start the run on this TPU; the first start on a TPU is free, later ones are recoveries.
start_run() {
  ((started == 0)) || count_relaunch "$1"
  started=1
  launch_run || { failures=$((failures + 1)); note "launch failed"; }
}

recreate() {
  count_relaunch "$1"
  started=0
  if [[ $1 != *NOT_FOUND* ]]; then
    delete_tpu || { failures=$((failures + 1)); note "delete failed"; return 0; }
  fi
  create_tpu || { failures=$((failures + 1)); note "create failed"; }
}

while :; do
  checks=$((checks + 1))
  if state=$(describe_state 2>"$errors"); then
    state=${state##*$'\n'}
  elif grep -q NOT_FOUND "$errors"; then
    state=NOT_FOUND
  else
    state=UNKNOWN
  fi
  cat "$errors" >&2
  case $state in
    READY | ACTIVE)
      if probe=$(probe_run); then
        failures=0
        probe=${probe##*$'\n'}
        note "check $checks: $state, run: $probe"
        case $probe in
          running) started=1 ;;
          "exited 0")
            note "the run finished (exit status 0)"
            exit 0
            ;;
          not-set-up)
            started=0
            if setup_tpu; then start_run "set up"; else
              failures=$((failures + 1))
              note "setup failed"
            fi
            ;;
          *) start_run "run $probe" ;;
        esac
      else
        failures=$((failures + 1))
        note "check $checks: $state, but ssh to worker 0 failed ($failures in a row)"
      fi
      ;;
    PREEMPTED | TERMINATED | SUSPENDING | SUSPENDED | FAILED | NOT_FOUND)
      failures=0
      note "check $checks: $state"
      recreate "TPU $state"
      ;;
    STOPPED)
      die "the TPU is STOPPED (stopped by hand?); start it with 'gcloud compute tpus tpu-vm start', then watch again"
      ;;
    UNKNOWN)
      failures=$((failures + 1))
      note "check $checks: could not read the TPU state ($failures in a row)"
      ;;
    *)
      failures=0
      note "check $checks: $state, waiting"
      ;;
  esac
  ((failures < MAX_FAILURES)) || die "$failures checks in a row failed (--max-failures); check the TPU and gcloud"
  if ((MAX_CHECKS > 0 && checks >= MAX_CHECKS)); then
    note "stopping after $checks checks (--max-checks); the run itself is not stopped"
    exit 3
  fi
  sleep "$INTERVAL"
done
