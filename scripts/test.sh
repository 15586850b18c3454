#!/usr/bin/env bash
# The whole test suite: the one test command (README), run by .ci/run.
#
# Installs what it needs on Debian (apt packages, the musl target,
# cargo-nextest), then: format and lint checks, unit tests, and the
# end-to-end tests that start real sandboxes as root and as an
# unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_pkgs=()
# qemu-system-x86, linux-image-amd64, busybox-static and cpio are for the
# nested lab (tests/lab): cgroup v2 is tested there. passt (pasta),
# nftables and iperf3 are for --network nat (tests/tests/network.rs,
# bench/network.sh).
for p in bubblewrap hyperfine util-linux iproute2 procps time python3 \
    passt nftables iperf3 \
    qemu-system-x86 linux-image-amd64 busybox-static cpio \
    selinux-policy-default policycoreutils; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        log "installing ${need_pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    else
        echo "missing Debian packages: ${need_pkgs[*]} (apt-get install them as root)" >&2
        exit 1
    fi
fi

# The nested lab's QEMU: bookworm's own (7.2) froze the lab VM about once
# in four VM-suite runs (the lab kernel stuck patching its text under
# multi-threaded TCG, tests/lab/README.md); 10.0 from bookworm-backports
# has not. Installed from there when the QEMU here is older than 10.
qemu_major=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
if [[ ${qemu_major:-0} -lt 10 ]] && grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
    if [[ $(id -u) -eq 0 ]]; then
        log "installing QEMU 10 from bookworm-backports (for the nested lab)"
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            cat >/etc/apt/sources.list.d/sandbox-bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
    else
        echo "note: QEMU ${qemu_major:-missing} is older than 10; the nested lab may freeze (tests/lab/README.md)" >&2
    fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    log "adding the musl target (sandbox-init is a static binary)"
    rustup target add x86_64-unknown-linux-musl
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

log "format"
cargo fmt --all -- --check
log "clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "clippy (the shipped static musl build)"
cargo clippy -p sandbox -p sandbox-init --target x86_64-unknown-linux-musl -- -D warnings
log "build (sandbox, and sandbox-init for musl)"
cargo build -p sandbox
cargo build -p sandbox -p sandbox-init --target x86_64-unknown-linux-musl
# The micro-VM tests boot our own guest kernel: build it (cached by the
# hash of its configuration, so only the first run pays the ~5 minutes).
log "guest kernel (scripts/build-kernel.sh, cached)"
if [[ $(id -u) -eq 0 ]]; then
    scripts/build-kernel.sh --jobs "$(nproc)"
else
    echo "SKIP: guest kernel build: not root (the VM tests will say so)"
fi
log "tests"
cargo nextest run --workspace --no-fail-fast "$@"

# Fuzz smoke: the hostile-input parsers run for a short while under
# libFuzzer. cargo-fuzz needs a nightly toolchain; where there is none the
# step is skipped with a reason (the fuzz targets are still built in
# development, see fuzz/README.md).
log "fuzz smoke (proto frames, ${FUZZ_SECONDS:-30}s)"
if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
    (cd fuzz && cargo +nightly fuzz run proto_frames -- -max_total_time="${FUZZ_SECONDS:-30}")
else
    echo "SKIP: fuzz smoke: no nightly Rust toolchain on this machine (cargo-fuzz needs one)"
fi
