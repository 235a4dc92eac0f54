#!/usr/bin/env bash
# Copy tailor-jax to every worker of a TPU VM, install it with the TPU build of JAX, fetch data.
set -euo pipefail

USAGE="Usage: setup.sh --name NAME --zone ZONE --project PROJECT [options]

On every worker (--worker=all): put the project in REMOTE_DIR (default: tailor-jax in the home
directory), create REMOTE_DIR/.venv with Python 3.12 (uv; the TPU images ship 3.10), and run
pip install -e '.[tpu]'. Then copy checkpoints and data with --fetch. Safe to run again.

Required:
  --name NAME              TPU VM name
  --zone ZONE              its zone
  --project PROJECT        Google Cloud project id

Options:
  --repo-url URL           Clone/fetch this git URL on the VM instead of copying this checkout's
                           committed tree (git archive HEAD; uncommitted changes are not copied)
  --ref REF                Branch, tag or commit to check out with --repo-url (default: main)
  --remote-dir DIR         Project directory on the VM, relative to home or absolute (default: tailor-jax)
  --python X.Y             Python version for the venv (default: 3.12)
  --fetch SRC=DEST         Repeatable. SRC gs://bucket/dir: 'gcloud storage rsync --recursive' its
                           contents into DEST on every worker; SRC a local file or directory: copied
                           into DEST (keeping its name) with 'tpu-vm scp --recurse'. DEST is relative
                           to REMOTE_DIR unless absolute, e.g. --fetch gs://my-bucket/qwen=checkpoints/qwen
  --dry-run                Print the commands, one per line prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project repo-url ref remote-dir python fetch dry-run" "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (see --help)"
require_target
require_setup_flags
setup_tpu
