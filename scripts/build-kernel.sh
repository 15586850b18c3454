#!/usr/bin/env bash
# Build the guest kernel for `sandbox run --vm` from the fragments in
# kernel-config/ and install it where the launcher looks for it.
#
#   scripts/build-kernel.sh [--source DIR] [--debug] [--jobs N] [--out DIR]
#                           [--force] [--config-only] [--keep-build]
#
# Steps (kernel-config/README.md explains the policy behind them):
#   1. Check the build tools; install the missing ones with apt when root.
#   2. Pick the source: --source DIR, or Debian's linux-source package
#      (installed with apt when missing and root), unpacked into a build dir.
#   3. Compute the cache key: this script's version, the source version, the
#      compiler, the architecture and the fragments' options.
#   4. On a cache miss: make tinyconfig, merge the fragments with
#      merge_config.sh -m, make olddefconfig, check that every requested
#      option is set as requested, build bzImage (and vmlinux), store
#      vmlinux (debug info stripped), bzImage and the resolved config in
#      the cache.
#   5. Install the cached files and print their paths.
set -euo pipefail

# Bump when the build steps change in a way that changes the result: it is
# part of the cache key.
SCRIPT_VERSION=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAG_DIR=$ROOT/kernel-config

die() {
	echo "build-kernel: error: $*" >&2
	exit 1
}
say() { echo "build-kernel: $*" >&2; }

usage() {
	cat <<'EOF'
Usage: scripts/build-kernel.sh [OPTIONS]

Build the guest kernel for `sandbox run --vm` (tinyconfig + the fragments in
kernel-config/) and install vmlinux, bzImage and the resolved config.

Options:
  --source DIR    build from this kernel source tree instead of Debian's
                  linux-source package
  --debug         add kernel-config/debug.config (installed into debug/
                  below the install directory unless --out is given)
  --jobs N        parallel make jobs (default: number of CPUs)
  --out DIR       install into DIR instead of the default location
  --force         rebuild even when the cache has this configuration
  --config-only   resolve and check the configuration, do not build
  --keep-build    keep the build directory (source and objects)
  -h, --help      this text

Install location: $PREFIX/share/sandbox/kernel when PREFIX is set or when
run as root (PREFIX defaults to /usr/local), otherwise
${XDG_DATA_HOME:-~/.local/share}/sandbox/kernel.
Cache: /var/cache/sandbox/kernel as root, otherwise
${XDG_CACHE_HOME:-~/.cache}/sandbox/kernel (SANDBOX_KERNEL_CACHE overrides).
EOF
}

# --- options ---------------------------------------------------------------

source_dir=
debug=0
jobs=$(nproc 2>/dev/null || echo 1)
out_dir=
force=0
config_only=0
keep_build=0

while [ $# -gt 0 ]; do
	case $1 in
	--source)
		[ $# -ge 2 ] || die "--source needs a directory"
		source_dir=$2
		shift 2
		;;
	--source=*)
		source_dir=${1#*=}
		shift
		;;
	--debug)
		debug=1
		shift
		;;
	--jobs | -j)
		[ $# -ge 2 ] || die "--jobs needs a number"
		jobs=$2
		shift 2
		;;
	--jobs=*)
		jobs=${1#*=}
		shift
		;;
	--out)
		[ $# -ge 2 ] || die "--out needs a directory"
		out_dir=$2
		shift 2
		;;
	--out=*)
		out_dir=${1#*=}
		shift
		;;
	--force)
		force=1
		shift
		;;
	--config-only)
		config_only=1
		shift
		;;
	--keep-build)
		keep_build=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

case $jobs in
'' | *[!0-9]* | 0) die "--jobs takes a positive number, not '$jobs'" ;;
esac

is_root=0
[ "$(id -u)" != 0 ] || is_root=1

# The fragments for this machine. Only x86_64 exists so far; aarch64 gets
# its own fragment next to it.
case $(uname -m) in
x86_64)
	karch=x86_64
	image_path=arch/x86/boot/bzImage
	;;
*) die "no fragment for $(uname -m) yet (only kernel-config/x86_64.config exists)" ;;
esac
fragments=("$FRAG_DIR/base.config" "$FRAG_DIR/$karch.config")
[ "$debug" = 0 ] || fragments+=("$FRAG_DIR/debug.config")
for f in "${fragments[@]}"; do
	[ -r "$f" ] || die "missing fragment $f"
done

if [ -n "${SANDBOX_KERNEL_CACHE:-}" ]; then
	cache_root=$SANDBOX_KERNEL_CACHE
elif [ "$is_root" = 1 ]; then
	cache_root=/var/cache/sandbox/kernel
else
	cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/sandbox/kernel
fi

if [ -n "$out_dir" ]; then
	install_dir=$out_dir
else
	if [ -n "${PREFIX:-}" ] || [ "$is_root" = 1 ]; then
		install_dir=${PREFIX:-/usr/local}/share/sandbox/kernel
	else
		install_dir=${XDG_DATA_HOME:-$HOME/.local/share}/sandbox/kernel
	fi
	[ "$debug" = 0 ] || install_dir=$install_dir/debug
fi

# --- 1. build tools --------------------------------------------------------

apt_install() { # apt_install PACKAGE...
	say "installing with apt: $*"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y --no-install-recommends "$@" >&2; then
		apt-get update >&2 || true
		apt-get install -y --no-install-recommends "$@" >&2 ||
			die "apt-get install $* failed"
	fi
}

have_header() { # have_header HEADER: does the C compiler find it?
	command -v gcc >/dev/null 2>&1 &&
		printf '#include <%s>\n' "$1" | gcc -E -x c - >/dev/null 2>&1
}

missing=()
command -v make >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1 &&
	command -v ld >/dev/null 2>&1 || missing+=(build-essential)
command -v flex >/dev/null 2>&1 || missing+=(flex)
command -v bison >/dev/null 2>&1 || missing+=(bison)
command -v bc >/dev/null 2>&1 || missing+=(bc)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
# objtool (x86_64) needs libelf; the kernel's host tools include OpenSSL
# headers even when no signing is configured.
have_header libelf.h || missing+=(libelf-dev)
have_header openssl/opensslv.h || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$is_root" = 1 ] && command -v apt-get >/dev/null 2>&1; then
		apt_install "${missing[@]}"
		# build-essential may have brought gcc, which the header checks need.
		have_header libelf.h || die "libelf.h still missing after installing libelf-dev"
		have_header openssl/opensslv.h || die "openssl headers still missing after installing libssl-dev"
	else
		die "missing build tools; install them with: apt-get install ${missing[*]}"
	fi
fi

# --- 2. the source -----------------------------------------------------------

tarball=
if [ -n "$source_dir" ]; then
	[ -f "$source_dir/Makefile" ] && [ -f "$source_dir/Kconfig" ] &&
		[ -x "$source_dir/scripts/kconfig/merge_config.sh" ] ||
		die "--source $source_dir is not a kernel source tree (no Makefile, Kconfig, scripts/kconfig/merge_config.sh)"
	source_dir=$(cd "$source_dir" && pwd)
	# An out-of-tree build (O=) refuses a tree configured in place.
	[ ! -e "$source_dir/.config" ] && [ ! -d "$source_dir/include/config" ] ||
		die "--source $source_dir has been configured in place; run 'make mrproper' in it first"
	kver=$(make -s -C "$source_dir" kernelversion 2>/dev/null) ||
		die "cannot read the kernel version of $source_dir"
	source_desc="tree $source_dir $kver"
	if git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1; then
		source_desc+=" git $(git -C "$source_dir" rev-parse HEAD)"
		git -C "$source_dir" diff --quiet HEAD 2>/dev/null || source_desc+="-dirty"
	fi
else
	find_tarball() {
		find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' 2>/dev/null | sort -V | tail -n 1
	}
	tarball=$(find_tarball)
	if [ -z "$tarball" ]; then
		if [ "$is_root" = 1 ] && command -v apt-get >/dev/null 2>&1; then
			apt_install linux-source
			tarball=$(find_tarball)
		fi
		[ -n "$tarball" ] ||
			die "no /usr/src/linux-source-*.tar.xz; install it with 'apt-get install linux-source' or pass --source DIR"
	fi
	pkg=$(basename "$tarball" .tar.xz) # linux-source-6.1
	pkg_version=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
	# Without dpkg metadata the tarball's own size and date stand in.
	[ -n "$pkg_version" ] || pkg_version="file $(stat -c %s-%Y "$tarball")"
	source_desc="debian $pkg $pkg_version"
fi

# --- 3. the cache key ----------------------------------------------------------

key=$(
	{
		echo "script $SCRIPT_VERSION"
		echo "arch $karch"
		echo "source $source_desc"
		gcc --version | sed -n 1p
		ld --version | sed -n 1p
		# The fragments' options, in order; comments and blank lines do
		# not change the kernel, so editing them does not cost a rebuild.
		for f in "${fragments[@]}"; do
			echo "fragment $(basename "$f")"
			grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set$)' "$f" || true
		done
	} | sha256sum
)
key=${key:0:16}
cache_dir=$cache_root/$key

mkdir -p "$cache_root" || die "cannot create the cache directory $cache_root"
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
	say "another kernel build holds $cache_root/.lock; waiting"
	flock 9
fi

cached() {
	[ -s "$cache_dir/vmlinux" ] && [ -s "$cache_dir/bzImage" ] &&
		[ -s "$cache_dir/config" ] && [ -s "$cache_dir/info" ]
}

# --- 4. configure, check, build --------------------------------------------------

# check_config CONFIG FRAGMENT...: every option a fragment sets must have
# that value in the resolved CONFIG; "# CONFIG_X is not set" requires the
# option to be off (or absent). A later fragment overrides an earlier one.
# Prints one line per option that did not stick and fails if there is any.
check_config() {
	local config=$1
	shift
	awk -v cfg="$config" '
		function parse(line) {
			if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) {
				name = substr(line, 1, RLENGTH - 1)
				value = substr(line, RLENGTH + 1)
				return 1
			}
			if (match(line, /^# CONFIG_[A-Za-z0-9_]+ is not set$/)) {
				name = substr(line, 3, RLENGTH - 13)
				value = "n"
				return 1
			}
			return 0
		}
		FILENAME == cfg {
			if (parse($0)) have[name] = value
			next
		}
		parse($0) {
			if (!(name in want)) order[++n] = name
			want[name] = value
			from[name] = FILENAME
		}
		END {
			bad = 0
			for (i = 1; i <= n; i++) {
				k = order[i]
				if (k in have) got = have[k]
				else got = "absent"
				if (want[k] == got) continue
				if (want[k] == "n" && got == "absent") continue
				if (got == "n") got = "not set"
				else if (got == "absent") got = "absent (a dependency is missing)"
				w = want[k]
				if (w == "n") w = "not set"
				sub(/.*\//, "", from[k])
				printf "  %s: requested %s (%s), resolved %s\n", k, w, from[k], got
				bad++
			}
			exit (bad > 0 ? 1 : 0)
		}
	' "$@" "$config"
}

work=
cleanup() {
	if [ -n "$work" ] && [ "$keep_build" = 0 ]; then
		rm -rf "$work"
	fi
}
trap cleanup EXIT

build_start=$(date +%s)
if [ "$force" = 1 ] || [ "$config_only" = 1 ] || ! cached; then
	work=$cache_root/build-$key
	rm -rf "$work"
	mkdir -p "$work"
	log=$cache_root/build-$key.log
	: >"$log"
	if [ -n "$tarball" ]; then
		say "unpacking $tarball"
		mkdir -p "$work/src"
		tar -xf "$tarball" -C "$work/src" --strip-components=1
		src=$work/src
	else
		src=$source_dir
	fi
	obj=$work/obj
	mkdir -p "$obj"
	kmake() { make -C "$src" O="$obj" ARCH="$karch" "$@" >>"$log" 2>&1; }

	say "configuring ($source_desc): tinyconfig + ${fragments[*]##*/}"
	kmake tinyconfig || die "make tinyconfig failed; see $log"
	# merge_config.sh keeps its temporary file in the current directory.
	(cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}") >>"$log" 2>&1 ||
		die "merge_config.sh failed; see $log"
	kmake olddefconfig || die "make olddefconfig failed; see $log"
	if ! bad=$(check_config "$obj/.config" "${fragments[@]}"); then
		echo "build-kernel: error: options that did not stick in the resolved .config:" >&2
		echo "$bad" >&2
		cp "$obj/.config" "$cache_root/$key.rejected.config"
		rm -f "$log"
		die "fix the fragments (a missing dependency is the usual cause); resolved config: $cache_root/$key.rejected.config"
	fi
	say "configuration checked: every requested option holds"

	if [ "$config_only" = 1 ]; then
		cp "$obj/.config" "$cache_root/$key.config"
		rm -f "$log"
		echo "$cache_root/$key.config"
		exit 0
	fi

	say "building with $jobs jobs (log: $log)"
	if ! kmake -j"$jobs" \
		KBUILD_BUILD_USER=sandbox KBUILD_BUILD_HOST=sandbox bzImage; then
		tail -n 30 "$log" >&2
		die "kernel build failed; see $log"
	fi
	build_seconds=$(($(date +%s) - build_start))

	rm -rf "$cache_dir" "$cache_dir.tmp"
	mkdir -p "$cache_dir.tmp"
	strip --strip-debug -o "$cache_dir.tmp/vmlinux" "$obj/vmlinux"
	cp "$obj/$image_path" "$cache_dir.tmp/bzImage"
	cp "$obj/.config" "$cache_dir.tmp/config"
	{
		echo "release=$(cat "$obj/include/config/kernel.release")"
		echo "source=$source_desc"
		echo "arch=$karch"
		echo "fragments=${fragments[*]##*/}"
		echo "key=$key"
		echo "script_version=$SCRIPT_VERSION"
		echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "build_seconds=$build_seconds"
		echo "jobs=$jobs"
	} >"$cache_dir.tmp/info"
	mv "$cache_dir.tmp" "$cache_dir"
	mv "$log" "$cache_dir/build.log"
	say "built in ${build_seconds}s"
else
	say "cached build $cache_dir (same fragments, source and compiler; --force rebuilds)"
fi

# --- 5. install -------------------------------------------------------------------

mkdir -p "$install_dir" || die "cannot create $install_dir (run as root, set PREFIX, or pass --out)"
for f in vmlinux bzImage config info; do
	# Copy then rename, so a launcher starting now sees the old or the new
	# file, never half of one.
	cp "$cache_dir/$f" "$install_dir/.$f.tmp"
	chmod 0644 "$install_dir/.$f.tmp"
	mv -f "$install_dir/.$f.tmp" "$install_dir/$f"
done

size() { stat -c %s "$1"; }
echo "release: $(sed -n 's/^release=//p' "$install_dir/info")"
echo "vmlinux: $install_dir/vmlinux ($(size "$install_dir/vmlinux") bytes)"
echo "bzImage: $install_dir/bzImage ($(size "$install_dir/bzImage") bytes)"
echo "config:  $install_dir/config"
