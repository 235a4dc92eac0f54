#!/usr/bin/env bash
# Create a TPU VM (or a queued resource) for tailor-jax.
set -euo pipefail

USAGE="Usage: create.sh --name NAME --zone ZONE --project PROJECT --accelerator TYPE [options]

Create a Cloud TPU VM, or with --queued a queued resource whose node has the same name.

Required:
  --name NAME              TPU VM (and queued-resource) name, e.g. tailor-v5e
  --zone ZONE              e.g. us-central2-b; the accelerator type must be offered there
  --project PROJECT        Google Cloud project id
  --accelerator TYPE       v4-N, v5p-N, v5litepod-N (or v5e-N), v6e-N; e.g. v5litepod-8

Options:
  --runtime-version V      TPU software version; default per type: v4 tpu-ubuntu2204-base,
                           v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot                   Spot capacity (cheaper, can be preempted at any time)
  --preemptible            Preemptible TPU VM (not with --queued; use --spot there)
  --queued                 Request a queued resource (waits in the queue until capacity exists)
  --dry-run                Print the gcloud command, one line prefixed '+ ', and run nothing
  -h, --help               Show this help"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_flags "name zone project accelerator runtime-version spot preemptible queued dry-run" "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (see --help)"
require_target
require_create_flags
create_tpu
