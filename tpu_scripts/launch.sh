#!/usr/bin/env bash
# Start a tailor-jax run on all workers of a TPU slice at once, detached from ssh.
set -euo pipefail

USAGE="Usage: launch.sh --name NAME --zone ZONE --project PROJECT --run-dir DIR [options] \\
           SUBCOMMAND CONFIG.yaml [key=value ...]

Run 'tailor-jax SUBCOMMAND CONFIG.yaml [key=value ...]' (SUBCOMMAND: run, sft or grpo) in
REMOTE_DIR on every worker (--worker=all), under setsid+nohup so it survives ssh drops. Each
worker logs to RUN_DIR/logs/<hostname>.log (logs/<run name>/ in REMOTE_DIR when RUN_DIR is gs://)
and records <hostname>.pid and, when the command ends, <hostname>.exit there. The environment is
passed explicitly: TAILOR_RUN_DIR=RUN_DIR, JAX_COMPILATION_CACHE_DIR=CACHE_DIR, and each --env.
No coordinator flags: on TPU, jax.distributed finds the other workers from the TPU metadata.
A run resumes from the last checkpoint in its run directory, so launching again continues it.

Required:
  --name NAME              TPU VM name
  --zone ZONE              its zone
  --project PROJECT        Google Cloud project id
  --run-dir DIR            Run directory, relative to REMOTE_DIR, absolute, or gs://bucket/path
                           (use gs:// for multi-host slices and for runs that must survive preemption)

Options:
  --remote-dir DIR         Project directory on the VM (default: tailor-jax)
  --cache-dir DIR          JAX compilation cache directory (default: jax-cache in REMOTE_DIR)
  --env NAME=VALUE         Repeatable. Extra environment, e.g. --env LIBTPU_INIT_ARGS=... or XLA_FLAGS=...
  --restart                Stop a run that is still going on a worker (SIGTERM, then SIGKILL
                           after 60 s) instead of refusing to start
  --dry-run                Print the gcloud command, one line prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project run-dir remote-dir cache-dir env restart dry-run" "$@"
require_target
require_launch_flags
launch_run
((DRY_RUN)) || note "follow the log with: $TPU_SCRIPTS_DIR/logs.sh --name=$NAME --zone=$ZONE --project=$PROJECT --run-dir=$RUN_DIR"
