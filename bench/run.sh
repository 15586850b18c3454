#!/usr/bin/env bash
# Startup-latency and memory benchmark: `sandbox run -- /bin/true` versus a
# bubblewrap invocation with roughly the same isolation.
#
# Usage:   bench/run.sh [--quick]
#
# See bench/README.md for what is measured and how to read the output.
#
# Environment knobs (all optional):
#   BENCH_RUNS      timed runs per command, in total (default 200, --quick: 20)
#   BENCH_ROUNDS    blocks those runs are split into (default 20,  --quick: 4)
#   BENCH_WARMUP    untimed warm-up runs per block   (default 5,   --quick: 2)
#   BENCH_RSS_RUNS  runs under /usr/bin/time         (default 5,   --quick: 2)
#   BENCH_CONTROL   1 (default): also time bwrap against itself (A/A control)
#                   to show how large the noise is; 0 to skip
#   BENCH_USER      user for the "rootless" pass when run as root; default is
#                   the first passwd entry with uid >= 1000; "none" skips it
#   SANDBOX_BIN     prebuilt launcher; skips `cargo build -p sandbox`
#   SANDBOX_INIT    prebuilt static init; skips the musl build of sandbox-init
#
# Benchmarks never gate anything: a MISS against a target is reported, and the
# script still exits 0. It exits non-zero only when it cannot measure at all
# (missing tools, failed build, a command under test that does not run).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
# The system interpreter, on purpose: a `python3` found on PATH may be a pyenv
# shim under /root that other users cannot execute.
PY=/usr/bin/python3
MUSL_TARGET=x86_64-unknown-linux-musl

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: bench/run.sh [--quick]

Compares `sandbox run -- /bin/true` with an equivalent bwrap command using a
single hyperfine invocation, then measures peak RSS with /usr/bin/time.
Results go to bench/results/<timestamp>/.

  --quick     few runs; a smoke test of the harness, not a measurement
  -h, --help  this text

Environment: BENCH_RUNS, BENCH_ROUNDS, BENCH_WARMUP, BENCH_RSS_RUNS,
BENCH_CONTROL, BENCH_USER, SANDBOX_BIN, SANDBOX_INIT (see the header of
this script).
EOF
}

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

if ((quick)); then
    runs=${BENCH_RUNS:-20} rounds=${BENCH_ROUNDS:-4} warmup=${BENCH_WARMUP:-2}
    rss_runs=${BENCH_RSS_RUNS:-2}
else
    runs=${BENCH_RUNS:-200} rounds=${BENCH_ROUNDS:-20} warmup=${BENCH_WARMUP:-5}
    rss_runs=${BENCH_RSS_RUNS:-5}
fi
control=${BENCH_CONTROL:-1}
[[ $control == [01] ]] || die "BENCH_CONTROL must be 0 or 1, got '$control'"
for pair in runs:BENCH_RUNS rounds:BENCH_ROUNDS warmup:BENCH_WARMUP rss_runs:BENCH_RSS_RUNS; do
    var=${pair%%:*}
    [[ ${!var} =~ ^[0-9]+$ ]] || die "${pair#*:} must be a non-negative integer, got '${!var}'"
done
((rounds >= 1)) || die "BENCH_ROUNDS must be at least 1"
# hyperfine needs at least two runs per block to compute a deviation.
block_runs=$(((runs + rounds - 1) / rounds))
((block_runs >= 2)) || die "BENCH_RUNS/BENCH_ROUNDS leaves fewer than 2 runs per block"
runs=$((block_runs * rounds))
((rss_runs >= 1)) || die "BENCH_RSS_RUNS must be at least 1"

is_root=0
[[ $(id -u) == 0 ]] && is_root=1

# ---------------------------------------------------------------------------
# 1. Tools
# ---------------------------------------------------------------------------
# executable -> Debian package providing it
declare -A pkg_of=(
    [hyperfine]=hyperfine
    [bwrap]=bubblewrap
    [/usr/bin/time]=time
    [/usr/bin/python3]=python3
    [setpriv]=util-linux
    [timeout]=coreutils
    [sha256sum]=coreutils
)

have() {
    if [[ $1 == /* ]]; then [[ -x $1 ]]; else command -v "$1" >/dev/null 2>&1; fi
}

ensure_tools() {
    local missing=() pkgs=() t
    for t in "${!pkg_of[@]}"; do
        have "$t" || { missing+=("$t"); pkgs+=("${pkg_of[$t]}"); }
    done
    ((${#missing[@]} == 0)) && return 0
    # de-duplicate package names
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    if ((is_root)) && have apt-get; then
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends "${pkgs[@]}"; then
            apt-get update
            apt-get install -y --no-install-recommends "${pkgs[@]}"
        fi
        for t in "${missing[@]}"; do
            have "$t" || die "'$t' is still missing after installing ${pkg_of[$t]}"
        done
    else
        printf 'error: missing tools: %s\n' "${missing[*]}" >&2
        printf 'install them first, e.g. on Debian/Ubuntu:\n' >&2
        printf '    sudo apt-get install -y %s\n' "${pkgs[*]}" >&2
        exit 1
    fi
}

ensure_tools
HYPERFINE=$(command -v hyperfine)
BWRAP=$(command -v bwrap)
SETPRIV=$(command -v setpriv)

# ---------------------------------------------------------------------------
# 2. Binaries under test
# ---------------------------------------------------------------------------
abspath() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd -P)" "$(basename "$1")"); }

target_dir() {
    local dir
    dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') ||
        dir="$ROOT/target"
    printf '%s\n' "$dir"
}

need_cargo() {
    have cargo || die "cargo not found; install Rust (https://rustup.rs) or set SANDBOX_BIN and SANDBOX_INIT to prebuilt binaries"
}

build_hint='set SANDBOX_BIN=/path/to/sandbox and SANDBOX_INIT=/path/to/sandbox-init to benchmark prebuilt binaries instead'

if [[ -n ${SANDBOX_BIN:-} ]]; then
    [[ -x $SANDBOX_BIN ]] || die "SANDBOX_BIN=$SANDBOX_BIN is not an executable file"
    sandbox_bin=$(abspath "$SANDBOX_BIN")
    log "using prebuilt launcher $sandbox_bin"
else
    need_cargo
    if have rustup && ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
        log "adding Rust target $MUSL_TARGET"
        (cd "$ROOT" && rustup target add "$MUSL_TARGET")
    fi
    # The shipped launcher is a static musl binary, like the init (see
    # docs/performance.md: dynamic linking costs ~1 ms per exec here).
    log "building the launcher: cargo build --release -p sandbox --target $MUSL_TARGET"
    (cd "$ROOT" && cargo build --release -p sandbox --target "$MUSL_TARGET") ||
        die "cargo build --release -p sandbox failed (see above); $build_hint"
    sandbox_bin="$(target_dir)/$MUSL_TARGET/release/sandbox"
    [[ -x $sandbox_bin ]] || die "build succeeded but $sandbox_bin does not exist; $build_hint"
fi

if [[ -n ${SANDBOX_INIT:-} ]]; then
    [[ -x $SANDBOX_INIT ]] || die "SANDBOX_INIT=$SANDBOX_INIT is not an executable file"
    init_bin=$(abspath "$SANDBOX_INIT")
    log "using prebuilt init $init_bin"
elif [[ -n ${SANDBOX_BIN:-} && -x $(dirname "$sandbox_bin")/sandbox-init ]]; then
    init_bin="$(dirname "$sandbox_bin")/sandbox-init"
    log "using the init beside SANDBOX_BIN: $init_bin"
else
    need_cargo
    if have rustup && ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
        log "adding Rust target $MUSL_TARGET"
        (cd "$ROOT" && rustup target add "$MUSL_TARGET")
    fi
    log "building the init: cargo build --release -p sandbox-init --target $MUSL_TARGET"
    (cd "$ROOT" && cargo build --release -p sandbox-init --target "$MUSL_TARGET") ||
        die "cargo build of sandbox-init failed (see above); $build_hint"
    init_bin="$(target_dir)/$MUSL_TARGET/release/sandbox-init"
    [[ -x $init_bin ]] || die "build succeeded but $init_bin does not exist; $build_hint"
fi

# Stage copies side by side in a world-readable scratch directory:
#  - the unprivileged pass can execute them even if the checkout is private;
#  - the launcher finds sandbox-init beside itself, so the unprivileged pass
#    (which starts from a clean environment) needs no SANDBOX_INIT;
#  - a concurrent `cargo build` cannot swap the binary mid-measurement.
scratch=$(mktemp -d /tmp/sandbox-bench.XXXXXX)
trap 'rm -rf -- "$scratch"' EXIT
chmod 0755 "$scratch"
install -m 0755 "$sandbox_bin" "$scratch/sandbox"
install -m 0755 "$init_bin" "$scratch/sandbox-init"
SANDBOX="$scratch/sandbox"
export SANDBOX_INIT="$scratch/sandbox-init"

# ---------------------------------------------------------------------------
# 3. What to run
# ---------------------------------------------------------------------------
# Results directory; UTC timestamp so runs sort chronologically.
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$BENCH_DIR/results/$stamp"

sandbox_cmd=("$SANDBOX" run -- /bin/true)
bwrap_cmd=("$BWRAP" --unshare-all --die-with-parent --ro-bind / / --dev /dev
    --proc /proc --tmpfs /tmp -- /bin/true)

# hyperfine -N splits its command strings with POSIX shell-word rules.
shquote() {
    local w out=()
    for w in "$@"; do
        if [[ $w =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
            out+=("$w")
        else
            out+=("'${w//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${out[*]}"
}

# Warnings worth keeping next to the numbers; written to notes.txt.
notes=()
note() { notes+=("$*"); warn "$*"; }

# Each "pass" is one (sandbox, bwrap) pair run under one identity.
pass_labels=() pass_prefix=()
if ((is_root)); then
    pass_labels+=(root) pass_prefix+=("")
else
    pass_labels+=("user $(id -un)") pass_prefix+=("")
fi

if ((is_root)); then
    bench_user=${BENCH_USER:-}
    if [[ -z $bench_user ]]; then
        bench_user=$(getent passwd | awk -F: '$3 >= 1000 && $3 < 65534 { print $1; exit }')
    fi
    if [[ -z $bench_user ]]; then
        note "rootless pass skipped: no user with uid >= 1000 (set BENCH_USER)"
    elif [[ $bench_user == none ]]; then
        note "rootless pass skipped: BENCH_USER=none"
    elif ! pw=$(getent passwd "$bench_user"); then
        die "BENCH_USER=$bench_user: no such user"
    else
        IFS=: read -r _ _ u_uid u_gid _ <<<"$pw"
        ((u_uid != 0)) || die "BENCH_USER=$bench_user is uid 0; pick an unprivileged user"
        # --reset-env gives the user's own HOME/PATH instead of root's, which
        # the launcher may not be able to read. SANDBOX_INIT is dropped with
        # the rest of the environment; the staged layout makes it unnecessary.
        pass_labels+=("user $bench_user")
        pass_prefix+=("$SETPRIV --reuid=$u_uid --regid=$u_gid --clear-groups --reset-env --")
    fi
fi

mkdir -p "$out" || die "cannot create $out (is the checkout writable by $(id -un)?)"

# Run one command once; on failure show its output and return non-zero.
preflight() {
    local what=$1; shift
    local tmp="$scratch/preflight.out" rc=0
    timeout 60 "$@" </dev/null >"$tmp" 2>&1 || rc=$?
    { printf '$ %s\n' "$(shquote "$@")"; cat "$tmp"; printf '[exit %s]\n\n' "$rc"; } >>"$out/preflight.log"
    if ((rc != 0)); then
        warn "$what exited with status $rc:"
        tail -n 20 "$tmp" | sed 's/^/    /' >&2
        return 1
    fi
}

cd /   # neutral working directory that every user can enter
hf_names=() hf_cmds=()
: >"$out/pairs.tsv"
kept_labels=() kept_prefix=()
for i in "${!pass_labels[@]}"; do
    label=${pass_labels[$i]}
    read -r -a prefix <<<"${pass_prefix[$i]}"
    log "pre-flight check [$label]"
    ok=1
    if ! preflight "sandbox [$label]" "${prefix[@]}" "${sandbox_cmd[@]}"; then
        ok=0
        if ((i == 0)); then
            die "the launcher does not run (see above and $out/preflight.log); nothing to benchmark"
        fi
        note "pass [$label] skipped: \`sandbox run -- /bin/true\` failed as $label (see preflight.log)"
    elif ! preflight "bwrap [$label]" "${prefix[@]}" "${bwrap_cmd[@]}"; then
        ok=0
        if ((i == 0)); then
            die "bwrap does not run here (user namespaces disabled?); no baseline to compare against"
        fi
        note "pass [$label] skipped: bwrap failed as $label (see preflight.log)"
    fi
    ((ok)) || continue
    kept_labels+=("$label") kept_prefix+=("${pass_prefix[$i]}")
    hf_names+=("sandbox [$label]" "bwrap [$label]")
    hf_cmds+=("$(shquote "${prefix[@]}" "${sandbox_cmd[@]}")" "$(shquote "${prefix[@]}" "${bwrap_cmd[@]}")")
    control_name=""
    if ((control)); then
        # The same bwrap command under a second name: an A/A comparison whose
        # ratio should be 1.00, so its deviation from 1.00 measures the noise.
        control_name="bwrap-control [$label]"
        hf_names+=("$control_name")
        hf_cmds+=("$(shquote "${prefix[@]}" "${bwrap_cmd[@]}")")
    fi
    printf '%s\tsandbox [%s]\tbwrap [%s]\t%s\n' "$label" "$label" "$label" "$control_name" >>"$out/pairs.tsv"
done

# ---------------------------------------------------------------------------
# Environment record (goes into the pasteable summary)
# ---------------------------------------------------------------------------
git_rev=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo "none (no commits)")
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    git_rev+=" (dirty)"
fi
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
read -r load1 _ </proc/loadavg
if awk -v l="$load1" -v n="$(nproc)" 'BEGIN { exit !(l >= n / 2) }'; then
    note "1-minute load average is $load1 on $(nproc) CPUs; expect noisy timings"
fi
{
    printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf 'host: %s, kernel %s, %s CPUs, %s\n' "$(uname -n)" "$(uname -r)" "$(nproc)" "${cpu:-unknown CPU}"
    printf 'mode: %s, %s runs per command in %s interleaved blocks (+%s warm-up each), %s RSS runs\n' \
        "$( ((quick)) && echo quick || echo full)" "$runs" "$rounds" "$warmup" "$rss_runs"
    printf 'git: %s\n' "$git_rev"
    printf 'sandbox: %s (sha256 %s)\n' \
        "$("$SANDBOX" --version 2>/dev/null | head -n1 || echo '?')" \
        "$(sha256sum "$SANDBOX" | cut -c1-16)"
    printf 'sandbox-init: sha256 %s\n' "$(sha256sum "$SANDBOX_INIT" | cut -c1-16)"
    printf 'baseline: %s\n' "$("$BWRAP" --version 2>/dev/null | head -n1)"
    printf 'tool: %s\n' "$("$HYPERFINE" --version | head -n1)"
    printf 'load before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/env.txt"
{
    printf 'sandbox: %s\nsandbox-init: %s\n' "$sandbox_bin" "$init_bin"
    printf 'sandbox command: %s\nbwrap command: %s\n' "$(shquote "${sandbox_cmd[@]}")" "$(shquote "${bwrap_cmd[@]}")"
    for i in "${!kept_labels[@]}"; do
        printf 'prefix [%s]: %s\n' "${kept_labels[$i]}" "${kept_prefix[$i]:-(none)}"
    done
} >"$out/commands.txt"

# ---------------------------------------------------------------------------
# 4. Latency: one hyperfine invocation for every command
# ---------------------------------------------------------------------------
# hyperfine runs its commands one after another, never interleaved, so a
# plain "all sandbox runs, then all bwrap runs" comparison absorbs any drift
# in machine load into the ratio. (On the 2-CPU development VM, with builds
# running next to it, bwrap timed against itself in one block of 200 runs each
# gave ratios from 0.89x to 1.12x; in 20 blocks of 10, within about +/-4%.)
# So the runs are split into BENCH_ROUNDS short blocks, named
# "<cmd> [<pass>] #<round>", and the order of the commands is reversed every
# other round (A B C, C B A, A B C, ...) so slow drift hits every command
# alike. report.py pools the blocks of each command.
hf_args=()
for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then
        order=("${!hf_names[@]}")
    else
        order=()
        for ((k = ${#hf_names[@]} - 1; k >= 0; k--)); do order+=("$k"); done
    fi
    for k in "${order[@]}"; do
        hf_args+=(-n "${hf_names[$k]} #$r" "${hf_cmds[$k]}")
    done
done

log "hyperfine: ${#hf_names[@]} commands x $rounds blocks of $block_runs runs (+$warmup warm-up); output in hyperfine.txt"
if ! "$HYPERFINE" -N --style basic --warmup "$warmup" --runs "$block_runs" \
    --export-json "$out/hyperfine.json" \
    "${hf_args[@]}" >"$out/hyperfine.txt" 2>&1; then
    tail -n 20 "$out/hyperfine.txt" | sed 's/^/    /' >&2
    die "hyperfine failed (full output in $out/hyperfine.txt)"
fi

# ---------------------------------------------------------------------------
# 5. Peak RSS
# ---------------------------------------------------------------------------
# GNU time's %M is ru_maxrss from wait4() on its direct child. For a waited-for
# child Linux reports the largest high-water RSS of that process *or of any
# descendant it reaped in turn* (the kernel folds each reaped child's maxrss
# into its parent's). It is a maximum over single processes, never a sum. So
# for `time sandbox run -- /bin/true` the figure is max(launcher, anything the
# launcher reaped: its init, and whatever the init reaped). The launcher is
# normally the largest of those, so %M is an upper bound on its own peak RSS,
# which is what the 10 MiB target is about. The bwrap figure is measured the
# same way for comparison. In the unprivileged pass the measured process
# starts as setpriv and execs the command; setpriv's own (small) footprint is
# included because the high-water mark survives exec.
printf 'label\ttool\tkib\n' >"$out/rss.tsv"
measure_rss() {
    local label=$1 tool=$2; shift 2
    local f="$scratch/time.out" k rc
    for ((k = 0; k < rss_runs; k++)); do
        rc=0
        /usr/bin/time -f '%M' -o "$f" "$@" </dev/null >/dev/null 2>&1 || rc=$?
        if ((rc != 0)); then
            note "RSS run of $tool [$label] exited with status $rc; sample discarded"
            continue
        fi
        printf '%s\t%s\t%s\n' "$label" "$tool" "$(tail -n1 "$f")" >>"$out/rss.tsv"
    done
}
for i in "${!kept_labels[@]}"; do
    label=${kept_labels[$i]}
    read -r -a prefix <<<"${kept_prefix[$i]}"
    log "peak RSS [$label]: $rss_runs run(s) each under /usr/bin/time"
    measure_rss "$label" sandbox "${prefix[@]}" "${sandbox_cmd[@]}"
    measure_rss "$label" bwrap "${prefix[@]}" "${bwrap_cmd[@]}"
done

printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/env.txt"
if ((${#notes[@]})); then printf '%s\n' "${notes[@]}"; fi >"$out/notes.txt"

# ---------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------
echo
"$PY" "$BENCH_DIR/report.py" "$out" | tee "$out/report.txt"
echo
log "raw results: $out"
