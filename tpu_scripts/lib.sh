# shellcheck shell=bash
# shellcheck disable=SC2034  # the flag globals below are read by the scripts that source this file
# Shared by the tailor-jax TPU scripts (create, setup, launch, logs, watch, delete).
# Source it from a script that has `set -euo pipefail` and defines USAGE; do not run it.
#
# Every external command goes through `run`, which prints it as `+ <command>` (shell-quoted, one
# line) and, unless --dry-run was given, runs it. Dry-run lines go to standard output; in a real run
# the same lines go to standard error, so captured output stays clean.

SCRIPT_NAME=$(basename "$0")
TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)
exec 3>&1 # fd 3: the terminal's stdout, also inside $(...) captures

# ---------------------------------------------------------------------------------------------
# Messages and command execution.

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
}

# Quote one word so that a POSIX shell (and Python's shlex.split) reads it back unchanged.
# For `--flag=value` only the value is quoted, which reads better: --command='...'.
quote_word() {
  local word=$1 prefix=""
  if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
    return
  fi
  if [[ $word =~ ^(--[a-z0-9-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
}

quote_command() {
  local word out=""
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

DRY_RUN=0

# Print a command as `+ ...`, then run it unless this is a dry run.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_command "$@")" >&3
    return 0
  fi
  printf '+ %s\n' "$(quote_command "$@")" >&2
  "$@"
}

# gcloud compute tpus <group> <verb> <resource> [flags...], with this run's zone and project.
gcloud_tpus() {
  local group=$1 verb=$2 resource=$3
  shift 3
  run gcloud compute tpus "$group" "$verb" "$resource" --zone="$ZONE" --project="$PROJECT" "$@"
}

# ---------------------------------------------------------------------------------------------
# Flags. Every script accepts a subset of one shared set, so a flag means the same everywhere.

NAME=""
ZONE=""
PROJECT=""
ACCELERATOR=""
RUNTIME_VERSION=""
SPOT=0
PREEMPTIBLE=0
QUEUED=0
YES=0
REPO_URL=""
REF="main"
REMOTE_DIR="tailor-jax"
PYTHON_VERSION="3.12"
FETCHES=()
RUN_DIR=""
CACHE_DIR="jax-cache"
ENVS=()
RESTART=0
WORKER="0"
LINES=100
FOLLOW=1
INTERVAL=60
MAX_CHECKS=0
MAX_RELAUNCHES=3
MAX_FAILURES=10
POSITIONAL=()

SWITCHES=" dry-run spot preemptible queued yes restart no-follow "

# parse_flags "ALLOWED FLAG NAMES" "$@": fills the globals above; non-flag words go to POSITIONAL.
parse_flags() {
  local allowed=" $1 help "
  shift
  local arg flag value has_value
  while (($#)); do
    arg=$1
    shift
    has_value=0
    case $arg in
      --)
        POSITIONAL+=("$@")
        break
        ;;
      -h) flag=help ;;
      --*=*)
        flag=${arg%%=*}
        flag=${flag#--}
        value=${arg#*=}
        has_value=1
        ;;
      --*) flag=${arg#--} ;;
      -?*) die "unknown flag $arg (see --help)" ;;
      *)
        POSITIONAL+=("$arg")
        continue
        ;;
    esac
    [[ $allowed == *" $flag "* ]] || die "unknown flag --$flag (see --help)"
    if [[ $flag == help ]]; then
      printf '%s\n' "$USAGE"
      exit 0
    fi
    if [[ $SWITCHES == *" $flag "* ]]; then
      ((has_value == 0)) || die "flag --$flag takes no value"
      set_switch "$flag"
      continue
    fi
    if ((has_value == 0)); then
      if (($# == 0)) || [[ $1 == --* ]]; then
        die "flag --$flag needs a value"
      fi
      value=$1
      shift
    fi
    [[ -n $value ]] || die "flag --$flag needs a non-empty value"
    set_value "$flag" "$value"
  done
}

set_switch() {
  case $1 in
    dry-run) DRY_RUN=1 ;;
    spot) SPOT=1 ;;
    preemptible) PREEMPTIBLE=1 ;;
    queued) QUEUED=1 ;;
    yes) YES=1 ;;
    restart) RESTART=1 ;;
    no-follow) FOLLOW=0 ;;
  esac
}

set_value() {
  local flag=$1 value=$2
  case $flag in
    name) NAME=$value ;;
    zone) ZONE=$value ;;
    project) PROJECT=$value ;;
    accelerator) ACCELERATOR=$value ;;
    runtime-version) RUNTIME_VERSION=$value ;;
    repo-url) REPO_URL=$value ;;
    ref) REF=$value ;;
    remote-dir) REMOTE_DIR=$value ;;
    python) PYTHON_VERSION=$value ;;
    fetch) FETCHES+=("$value") ;;
    run-dir) RUN_DIR=$value ;;
    cache-dir) CACHE_DIR=$value ;;
    env) ENVS+=("$value") ;;
    worker) WORKER=$value ;;
    lines) LINES=$value ;;
    interval) INTERVAL=$value ;;
    max-checks) MAX_CHECKS=$value ;;
    max-relaunches) MAX_RELAUNCHES=$value ;;
    max-failures) MAX_FAILURES=$value ;;
    *) die "internal: flag --$flag has no handler" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Validation: one clear line and exit 2 for anything wrong.

require_target() {
  [[ -n $NAME ]] || die "missing --name (the TPU VM or queued-resource name)"
  [[ -n $ZONE ]] || die "missing --zone (e.g. --zone=us-central2-b)"
  [[ -n $PROJECT ]] || die "missing --project (your Google Cloud project id)"
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "bad --name '$NAME': use lowercase letters, digits and hyphens, starting with a letter"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "bad --zone '$ZONE': expected e.g. us-central2-b"
  [[ $PROJECT =~ ^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
    die "bad --project '$PROJECT': expected a project id such as my-project-123"
}

require_count() {
  local flag=$1 value=$2
  [[ $value =~ ^[0-9]+$ ]] || die "bad --$flag '$value': expected a whole number"
}

# A path on the VM: relative to the remote repo dir (or, for --remote-dir, to the home directory)
# or absolute. `~` would not expand inside the quoted remote commands, so it is refused.
require_remote_path() {
  local flag=$1 value=$2
  [[ $value != '~'* ]] || die "bad --$flag '$value': give a path relative to the home directory, or absolute, without ~"
}

# Accelerator type -> default runtime (software) version, from the Cloud TPU "TPU software
# versions" page: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
# v4 tpu-ubuntu2204-base. `v5e-N` is accepted as a name for the API's `v5litepod-N`.
# Sizes: v4/v5p count TensorCores (two per chip, from 8); v5e/v6e count chips (1 to 256).
resolve_accelerator() {
  [[ -n $ACCELERATOR ]] || die "missing --accelerator (one of v4-N, v5p-N, v5litepod-N (v5e-N), v6e-N)"
  if [[ $ACCELERATOR =~ ^v5e-([0-9]+)$ ]]; then
    ACCELERATOR="v5litepod-${BASH_REMATCH[1]}"
  fi
  [[ $ACCELERATOR =~ ^(v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] ||
    die "unknown accelerator type '$ACCELERATOR': use v4-N, v5p-N, v5litepod-N (or v5e-N) or v6e-N, e.g. v5litepod-8"
  local family=${BASH_REMATCH[1]} size=$((10#${BASH_REMATCH[2]})) default_runtime
  case $family in
    v4 | v5p)
      ((size >= 8 && size % 8 == 0)) ||
        die "bad accelerator size '$ACCELERATOR': $family-N counts TensorCores, a multiple of 8 (e.g. $family-8)"
      ;;
    v5litepod | v6e)
      [[ " 1 4 8 16 32 64 128 256 " == *" $size "* ]] ||
        die "bad accelerator size '$ACCELERATOR': $family slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips"
      ;;
  esac
  case $family in
    v4) default_runtime=tpu-ubuntu2204-base ;;
    v5p) default_runtime=v2-alpha-tpuv5 ;;
    v5litepod) default_runtime=v2-alpha-tpuv5-lite ;;
    v6e) default_runtime=v2-alpha-tpuv6e ;;
  esac
  RUNTIME_VERSION=${RUNTIME_VERSION:-$default_runtime}
}

require_create_flags() {
  resolve_accelerator
  ((SPOT + PREEMPTIBLE < 2)) || die "--spot and --preemptible exclude each other; pick one"
  ((!(QUEUED && PREEMPTIBLE))) || die "queued resources have no --preemptible; use --spot"
}

require_setup_flags() {
  require_remote_path remote-dir "$REMOTE_DIR"
  [[ $PYTHON_VERSION =~ ^3\.[0-9]+$ ]] || die "bad --python '$PYTHON_VERSION': expected e.g. 3.12"
  local item
  for item in "${FETCHES[@]}"; do
    [[ $item == *?=?* ]] || die "bad --fetch '$item': expected SOURCE=DEST (gs://bucket/dir=data/dir or local/path=data)"
    require_remote_path fetch "${item##*=}"
  done
}

# launch: POSITIONAL is `SUBCOMMAND CONFIG.yaml [key=value ...]`.
require_launch_flags() {
  require_remote_path remote-dir "$REMOTE_DIR"
  [[ -n $RUN_DIR ]] || die "missing --run-dir (where the run keeps checkpoints and logs, e.g. runs/gf-grpo)"
  require_remote_path run-dir "$RUN_DIR"
  require_remote_path cache-dir "$CACHE_DIR"
  ((${#POSITIONAL[@]} >= 2)) || die "missing command: give SUBCOMMAND CONFIG.yaml [key=value ...], e.g. run configs/x.yaml"
  case ${POSITIONAL[0]} in
    run | sft | grpo) ;;
    *) die "unknown subcommand '${POSITIONAL[0]}': use run, sft or grpo" ;;
  esac
  [[ ${POSITIONAL[1]} == *.yaml || ${POSITIONAL[1]} == *.yml ]] ||
    die "bad config '${POSITIONAL[1]}': expected a .yaml file (a path in the repo on the VM)"
  local item
  for item in "${POSITIONAL[@]:2}"; do
    [[ $item =~ ^[A-Za-z_][A-Za-z0-9_.]*= ]] || die "bad override '$item': expected key=value (e.g. optimizer.lr=3e-4)"
  done
  for item in "${ENVS[@]}"; do
    [[ $item =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "bad --env '$item': expected NAME=VALUE (e.g. LIBTPU_INIT_ARGS=--xla_tpu_...)"
  done
}

# Logs live next to the run: RUN_DIR/logs, or logs/<run name> in the repo when RUN_DIR is on GCS
# (a gs:// object cannot be appended to).
log_dir() {
  if [[ $RUN_DIR == gs://* ]]; then
    printf 'logs/%s' "$(basename "$RUN_DIR")"
  else
    printf '%s/logs' "${RUN_DIR%/}"
  fi
}

# ---------------------------------------------------------------------------------------------
# The gcloud steps. Each one is a function so `watch.sh` can repeat it.

describe_state() {
  if ((QUEUED)); then
    gcloud_tpus queued-resources describe "$NAME" --format='value(state.state)'
  else
    gcloud_tpus tpu-vm describe "$NAME" --format='value(state)'
  fi
}

create_tpu() {
  local extra=()
  ((SPOT)) && extra+=(--spot)
  ((PREEMPTIBLE)) && extra+=(--preemptible)
  if ((QUEUED)); then
    gcloud_tpus queued-resources create "$NAME" --node-id="$NAME" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME_VERSION" "${extra[@]}"
  else
    gcloud_tpus tpu-vm create "$NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" "${extra[@]}"
  fi
}

delete_tpu() {
  local extra=()
  ((YES)) && extra+=(--quiet)
  if ((QUEUED)); then
    gcloud_tpus queued-resources delete "$NAME" --force "${extra[@]}"
  else
    gcloud_tpus tpu-vm delete "$NAME" "${extra[@]}"
  fi
}

# Run a bash script on the VM's workers (`all` or a worker index).
ssh_workers() {
  local worker=$1 script=$2
  gcloud_tpus tpu-vm ssh "$NAME" --worker="$worker" --command="$script"
}

# Copy the project to every worker and install it with the TPU build of JAX into REMOTE_DIR/.venv.
# The VM images ship Python 3.10 while the project needs >= 3.11, so uv provides PYTHON_VERSION.
setup_tpu() {
  local remote q_remote archive script item src dest
  remote=$REMOTE_DIR
  q_remote=$(quote_word "$remote")
  script="set -euo pipefail"
  if [[ -n $REPO_URL ]]; then
    script+="; [ -d $q_remote/.git ] || git clone --quiet $(quote_word "$REPO_URL") $q_remote"
    script+="; git -C $q_remote fetch --quiet $(quote_word "$REPO_URL") $(quote_word "$REF")"
    script+="; git -C $q_remote checkout --quiet --detach FETCH_HEAD"
  else
    # The committed tree (HEAD) of this checkout; uncommitted changes are not copied.
    archive="${TMPDIR:-/tmp}/tailor-jax-$NAME.tar.gz"
    if ((!DRY_RUN)) && [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
      note "warning: uncommitted changes in $REPO_ROOT are not copied (only HEAD is)"
    fi
    run git -C "$REPO_ROOT" archive --format=tar.gz --output="$archive" HEAD || return
    gcloud_tpus tpu-vm scp "$archive" "$NAME:tailor-jax-src.tar.gz" --worker=all || return
    script+="; mkdir -p $q_remote && tar -xzf tailor-jax-src.tar.gz -C $q_remote && rm tailor-jax-src.tar.gz"
  fi
  script+="; cd $q_remote"
  script+="; command -v uv >/dev/null || [ -x \"\$HOME/.local/bin/uv\" ] || curl -LsSf https://astral.sh/uv/install.sh | sh"
  script+="; export PATH=\"\$HOME/.local/bin:\$PATH\""
  script+="; [ -x .venv/bin/python ] || uv venv --seed --python $(quote_word "$PYTHON_VERSION") .venv"
  script+="; .venv/bin/pip install --quiet --upgrade pip && .venv/bin/pip install --quiet -e '.[tpu]'"
  for item in "${FETCHES[@]}"; do
    src=${item%=*}
    dest=${item##*=}
    script+="; mkdir -p $(quote_word "$dest")"
    if [[ $src == gs://* ]]; then
      script+="; gcloud storage rsync --recursive $(quote_word "$src") $(quote_word "$dest")"
    fi
  done
  script+="; .venv/bin/python -c 'import jax; print(\"tailor-jax installed; jax\", jax.__version__)'"
  ssh_workers all "$script" || return
  for item in "${FETCHES[@]}"; do
    src=${item%=*}
    dest=${item##*=}
    [[ $src == gs://* ]] && continue
    [[ $dest == /* ]] || dest="$remote/$dest"
    gcloud_tpus tpu-vm scp "$src" "$NAME:$dest/" --worker=all --recurse || return
  done
}

# Start `tailor-jax SUBCOMMAND CONFIG [overrides]` on every worker at once, detached from ssh
# (setsid + nohup), with its environment spelled out. Each worker writes LOG_DIR/<host>.log, its
# pid to <host>.pid and, when the command ends, its exit status to <host>.exit.
# TAILOR_TPU_SLICE=1 makes tailor-jax call jax.distributed.initialize(), which finds the other
# workers from TPU metadata, so no coordinator flags are needed.
launch_run() {
  local q_log env_words=() item script
  q_log=$(quote_word "$(log_dir)")
  env_words+=("TAILOR_RUN_DIR=$RUN_DIR" "JAX_COMPILATION_CACHE_DIR=$CACHE_DIR" "TAILOR_TPU_SLICE=1")
  env_words+=("${ENVS[@]}")
  script="set -euo pipefail; cd $(quote_word "$REMOTE_DIR"); mkdir -p $q_log"
  script+="; f=$q_log/\$(hostname); pid=\$(cat \"\$f.pid\" 2>/dev/null || true)"
  script+="; if [ ! -f \"\$f.exit\" ] && [ -n \"\$pid\" ] && kill -0 \"\$pid\" 2>/dev/null; then"
  if ((RESTART)); then
    script+=" kill -TERM -- \"-\$pid\"; for _ in \$(seq 60); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done"
    script+="; kill -KILL -- \"-\$pid\" 2>/dev/null || true"
  else
    script+=" echo \"\$(hostname): a run is already going (pid \$pid); pass --restart to replace it\" >&2; exit 3"
  fi
  script+="; fi; rm -f \"\$f.exit\""
  script+="; env $(quote_command "${env_words[@]}")"
  script+=" setsid nohup bash -c '.venv/bin/tailor-jax \"\$@\"; echo \$? > \"\$0\"' \"\$f.exit\""
  script+=" $(quote_command "${POSITIONAL[@]}") > \"\$f.log\" 2>&1 < /dev/null &"
  script+=" echo \$! > \"\$f.pid\"; echo \"\$(hostname): started pid \$!, log $(quote_word "$REMOTE_DIR")/\$f.log\""
  ssh_workers all "$script"
}

# Print the last LINES lines of worker WORKER's log and, with FOLLOW, keep streaming it.
stream_logs() {
  local follow=""
  ((FOLLOW)) && follow=" -F"
  ssh_workers "$WORKER" "cd $(quote_word "$REMOTE_DIR") && tail -n $LINES$follow $(quote_word "$(log_dir)")/\$(hostname).log"
}

# One word about the run on worker 0: not-set-up, exited <status>, running, or not-running.
# The .exit file is checked first: it is written as the run ends, and launch removes it.
probe_run() {
  local q_log
  q_log=$(quote_word "$(log_dir)")
  ssh_workers 0 "cd $(quote_word "$REMOTE_DIR") 2>/dev/null && [ -x .venv/bin/tailor-jax ] || { echo not-set-up; exit 0; }; f=$q_log/\$(hostname); pid=\$(cat \"\$f.pid\" 2>/dev/null || true); if [ -f \"\$f.exit\" ]; then echo \"exited \$(cat \"\$f.exit\")\"; elif [ -n \"\$pid\" ] && kill -0 \"\$pid\" 2>/dev/null; then echo running; else echo not-running; fi"
}
