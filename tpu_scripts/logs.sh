#!/usr/bin/env bash
# Stream the log of a tailor-jax run from one worker (worker 0 by default).
set -euo pipefail

USAGE="Usage: logs.sh --name NAME --zone ZONE --project PROJECT --run-dir DIR [options]

Print the last lines of a worker's log of a run started by launch.sh and keep streaming it
(tail -F). Stopping this (Ctrl-C) does not stop the run.

Required:
  --name NAME              TPU VM name
  --zone ZONE              its zone
  --project PROJECT        Google Cloud project id
  --run-dir DIR            The run directory given to launch.sh

Options:
  --remote-dir DIR         Project directory on the VM (default: tailor-jax)
  --worker N               Which worker's log (default: 0)
  --lines N                How many past lines to show first (default: 100)
  --no-follow              Print the lines and stop
  --dry-run                Print the gcloud command, one line prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project run-dir remote-dir worker lines no-follow dry-run" "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (see --help)"
require_target
[[ -n $RUN_DIR ]] || die "missing --run-dir (the run directory given to launch.sh)"
require_remote_path remote-dir "$REMOTE_DIR"
require_remote_path run-dir "$RUN_DIR"
require_count worker "$WORKER"
require_count lines "$LINES"
stream_logs
