# The escape-and-fault cases, run INSIDE a sandbox by escape_suite.rs.
#
# Each case tries something a hostile command would try and prints one line:
#   CASE <name> HELD            the sandbox held
#   CASE <name> ESCAPED <why>   it did not
# argv[1]: host loopback TCP port with a listener on the host
# argv[2]: an abstract unix socket name held by a host process
import ctypes, errno, fcntl, os, socket, struct, sys, termios

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = []


def case(name):
    def wrap(fn):
        try:
            why = fn()
        except Exception as e:  # a case that crashes did not prove anything
            why = f"case raised {e!r}"
        results.append((name, why))
        return fn
    return wrap


def sys_errno(nr, *args):
    """Raw syscall; returns the errno (0 if it succeeded)."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()


def denied(nr, *args, ok=(errno.EPERM,)):
    e = sys_errno(nr, *args)
    return None if e in ok else f"errno {errno.errorcode.get(e, e)}"


NR = dict(keyctl=250, add_key=248, request_key=249, bpf=321, perf_event_open=298,
          init_module=175, finit_module=313, delete_module=176, kexec_load=246,
          kexec_file_load=320, mount=165, umount2=166, pivot_root=155, fsopen=430,
          open_tree=428, move_mount=429, mount_setattr=442, setns=308, unshare=272,
          clone=56, clone3=435, syslog=103, open_by_handle_at=304, userfaultfd=323,
          io_uring_setup=425, iopl=172, ioperm=173, reboot=169, settimeofday=164,
          swapon=167, acct=163, chroot=161, sethostname=170, getpid=39, ptrace=101)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000

@case("fd-leak")
def _():
    fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    # 0-2 and the directory fd listdir itself opened
    return None if len(fds) <= 4 and fds[:3] == [0, 1, 2] else f"open fds {fds}"


for name in ["keyctl", "add_key", "request_key", "bpf", "perf_event_open", "init_module",
             "finit_module", "delete_module", "kexec_load", "kexec_file_load", "fsopen",
             "open_tree", "move_mount", "mount_setattr", "setns", "syslog",
             "open_by_handle_at", "userfaultfd", "io_uring_setup", "iopl", "ioperm",
             "acct", "swapon", "reboot", "settimeofday"]:
    case(f"seccomp-{name}")(lambda n=name: denied(NR[n], 0, 0, 0, 0, 0))

case("mount")(lambda: denied(NR["mount"], 0, 0, 0, 0, 0))
case("umount-root")(lambda: denied(NR["umount2"], 0, 2))
case("pivot-root")(lambda: denied(NR["pivot_root"], 0, 0))
case("unshare-user")(lambda: denied(NR["unshare"], CLONE_NEWUSER))
case("clone-newuser")(lambda: denied(NR["clone"], CLONE_NEWUSER | 17, 0, 0, 0, 0))
case("clone3-hidden-flags")(lambda: denied(NR["clone3"], 0, 0, ok=(errno.ENOSYS,)))
case("x32-abi")(lambda: denied(NR["getpid"] | 0x40000000, ok=(errno.ENOSYS,)))
case("sethostname")(lambda: denied(NR["sethostname"], 0, 0))


@case("chroot")
def _():
    try:
        os.chroot("/tmp")
        return "chroot succeeded"
    except OSError as e:
        return None if e.errno == errno.EPERM else str(e)

@case("tiocsti-high-bits")
def _():
    fd = os.open("/dev/null", os.O_RDWR)
    req = 0x5412 | (1 << 32)  # TIOCSTI with a high bit set
    ctypes.set_errno(0)
    r = libc.ioctl(fd, ctypes.c_ulong(req), ctypes.c_char_p(b"x"))
    e = ctypes.get_errno()
    os.close(fd)
    return None if r < 0 and e == errno.EPERM else f"ioctl returned {r} errno {e}"


@case("tioclinux")
def _():
    fd = os.open("/dev/null", os.O_RDWR)
    ctypes.set_errno(0)
    r = libc.ioctl(fd, ctypes.c_ulong(0x541C), ctypes.c_char_p(b"\x0b"))
    e = ctypes.get_errno()
    os.close(fd)
    return None if r < 0 and e == errno.EPERM else f"ioctl returned {r} errno {e}"


@case("no-capabilities")
def _():
    status = open("/proc/self/status").read()
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]:
        line = [l for l in status.splitlines() if l.startswith(key + ":")][0]
        if int(line.split()[1], 16) != 0:
            return line
    return None


@case("no-new-privs-and-seccomp")
def _():
    status = open("/proc/self/status").read()
    if "NoNewPrivs:\t1" not in status:
        return "NoNewPrivs is not 1"
    if "Seccomp:\t2" not in status:
        return "no seccomp filter"
    return None


def write_fails(path, ok=(errno.EROFS, errno.EACCES, errno.EPERM)):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        return f"could write {path}"
    except OSError as e:
        return None if e.errno in ok else f"{path}: {e}"


case("write-etc")(lambda: write_fails("/etc/sandbox-escape-test"))
case("write-usr-bin")(lambda: write_fails("/usr/bin/sandbox-escape-test"))
case("write-proc-sys")(lambda: write_fails("/proc/sys/kernel/hostname"))
case("write-sys")(lambda: write_fails("/sys/kernel/uevent_helper"))
case("write-dev")(lambda: write_fails("/dev/sandbox-escape-test"))


@case("mknod-device")
def _():
    try:
        os.mknod("/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1))
        return "created /dev/mem equivalent"
    except OSError as e:
        return None if e.errno in (errno.EPERM,) else str(e)


@case("minimal-dev")
def _():
    extra = set(os.listdir("/dev")) - {"null", "zero", "full", "random", "urandom", "tty",
                                        "ptmx", "pts", "shm", "fd", "stdin", "stdout", "stderr"}
    return f"unexpected /dev entries {sorted(extra)}" if extra else None


@case("masked-proc")
def _():
    for p in ["/proc/keys", "/proc/timer_list", "/proc/kallsyms", "/proc/kcore", "/proc/sysrq-trigger"]:
        try:
            data = open(p, "rb").read(64)
        except OSError:
            continue
        if data:
            return f"{p} readable"
    return None


@case("masked-sys-firmware")
def _():
    try:
        os.listdir("/sys/firmware")
        return "/sys/firmware listable" if os.listdir("/sys/firmware") else None
    except OSError:
        return None


@case("ptrace-init")
def _():
    return denied(NR["ptrace"], 16, 1, 0, 0, ok=(errno.EPERM,))  # PTRACE_ATTACH pid 1


@case("proc-1-root")
def _():
    try:
        os.listdir("/proc/1/root")
        return "init's root is reachable"
    except OSError as e:
        return None if e.errno in (errno.EACCES, errno.EPERM) else str(e)


@case("kill-init")
def _():
    try:
        os.kill(1, 9)
    except OSError:
        pass
    # The kernel protects a namespace's init from its own namespace, and our
    # init must still be alive (we are still running and PID 1 exists).
    return None if os.path.exists("/proc/1/status") else "init died"


@case("host-loopback-tcp")
def _():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
        return "reached a host loopback listener"
    except OSError:
        return None


@case("host-abstract-socket")
def _():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\0" + sys.argv[2])
        return "reached a host abstract socket"
    except OSError:
        return None


@case("setuid-binary")
def _():
    for b in ["/usr/bin/passwd", "/usr/bin/su", "/bin/su"]:
        if os.path.exists(b):
            st = os.stat(b)
            if st.st_mode & 0o4000:
                r = os.system(f"{b} --help >/dev/null 2>&1; id -u > /tmp/uid-after")
                uid = int(open("/tmp/uid-after").read())
                return None if uid == os.getuid() else f"uid changed to {uid}"
    return None




for name, why in results:
    print(f"CASE {name} " + ("HELD" if why is None else f"ESCAPED {why}"))
