#!/usr/bin/env bash
# Delete a tailor-jax TPU VM (or queued resource and its node).
set -euo pipefail

USAGE="Usage: delete.sh --name NAME --zone ZONE --project PROJECT [--queued] [--yes] [--dry-run]

Delete the TPU VM, or with --queued the queued resource together with its node (--force).
Anything stored only on the VM's disks (e.g. a local run directory) is lost.

Required:
  --name NAME              TPU VM (or queued-resource) name
  --zone ZONE              its zone
  --project PROJECT        Google Cloud project id

Options:
  --queued                 It was created with create.sh --queued
  --yes                    Do not ask for confirmation (passes --quiet to gcloud)
  --dry-run                Print the gcloud command, one line prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project queued yes dry-run" "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (see --help)"
require_target
delete_tpu
