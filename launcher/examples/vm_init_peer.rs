//! A stand-in for the launcher's side of the micro-VM protocol, to prove
//! `sandbox-init --vm` with QEMU before our own VMM boots (see
//! `docs/vm.md`). Not part of the product.
//!
//! ```text
//! vm_init_peer initramfs OUT            # write the guest initramfs (static init)
//! vm_init_peer serve [--tty] [--vol DST] -- CMD [ARG]...
//! ```
//!
//! `serve` listens on vsock ports 1024-1027 (any CID), accepts the guest's
//! control channel and stdio streams, answers `Hello` with a `Start` for
//! CMD (uid/gid 1000, root share `sandbox-root`, optionally share `vol0` on
//! DST), writes `ping\n` to the command's stdin and closes it, copies the
//! command's stdout/stderr to its own, prints `PEER ...` lines for the
//! control messages on stderr and exits with the command's status once the
//! output ended. With `--tty` it also sends `Resize { rows: 40, cols: 100 }`
//! after `Started`.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use sandbox_proto::{
    encode, vm, ExitStatus, FrameBuf, FsSpec, HostMsg, InitMsg, InitSpec, Mount, RootSource,
    SysMode, TtySpec, UserSpec,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("initramfs") if args.len() == 2 => initramfs(&args[1]),
        Some("serve") => serve(&args[1..]),
        _ => {
            eprintln!("usage: vm_init_peer initramfs OUT | serve [--tty] [--vol DST] -- CMD...");
            2
        }
    };
    std::process::exit(code);
}

fn initramfs(out: &str) -> i32 {
    let (path, init) = match sandbox::vm::initramfs::find_init() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vm_init_peer: {e}");
            return 1;
        }
    };
    let cpio = match sandbox::vm::initramfs::build(&init) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vm_init_peer: {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::write(out, &cpio) {
        eprintln!("vm_init_peer: {out}: {e}");
        return 1;
    }
    eprintln!(
        "PEER initramfs {out}: {} bytes, init from {}",
        cpio.len(),
        path.display()
    );
    0
}

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        eprintln!("vm_init_peer: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    r
}

fn listen(port: u32) -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = check(
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    );
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_vm is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: valid address of the given size.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    check(r, "bind");
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(fd, 1) }, "listen");
    sock
}

fn accept(l: &OwnedFd) -> OwnedFd {
    // SAFETY: accept without an address.
    let fd = check(
        unsafe { libc::accept4(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), 0) },
        "accept",
    );
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

fn send(ctl: &OwnedFd, msg: &HostMsg) {
    let frame = encode(msg).unwrap_or_default();
    if !write_all(ctl.as_raw_fd(), &frame) {
        eprintln!("PEER cannot send {msg:?}");
    }
}

fn serve(args: &[String]) -> i32 {
    let mut tty = false;
    let mut vol: Option<String> = None;
    let mut it = args.iter();
    let mut argv = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tty" => tty = true,
            "--vol" => vol = it.next().cloned(),
            "--" => {
                argv = it.by_ref().map(|s| s.as_bytes().to_vec()).collect();
                break;
            }
            other => {
                eprintln!("vm_init_peer: unknown option {other}");
                return 2;
            }
        }
    }
    let listeners: Vec<OwnedFd> = [
        vm::CONTROL_PORT,
        vm::STDIN_PORT,
        vm::STDOUT_PORT,
        vm::STDERR_PORT,
    ]
    .iter()
    .map(|p| listen(*p))
    .collect();
    eprintln!("PEER listening");
    let ctl = accept(&listeners[0]);
    let stdin = accept(&listeners[1]);
    let stdout = accept(&listeners[2]);
    let stderr = accept(&listeners[3]);
    eprintln!("PEER all four streams connected");

    let mut fb = FrameBuf::new();
    let mut mounts = Vec::new();
    if let Some(dst) = vol {
        mounts.push(Mount::Share {
            tag: vm::volume_tag(0),
            dst: dst.into_bytes(),
            readonly: false,
        });
    }
    let spec = InitSpec {
        argv,
        env: vec![
            b"PATH=/usr/local/bin:/usr/bin:/bin".to_vec(),
            b"HOME=/tmp".to_vec(),
        ],
        cwd: b"/".to_vec(),
        create_cwd: false,
        user: UserSpec {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
            uid_map: "1000 1000 1\n".into(),
            gid_map: "1000 1000 1\n".into(),
            allow_setgroups: false,
            init_ns_uid: 1000,
            init_ns_gid: 1000,
        },
        hostname: b"vm-guest".to_vec(),
        fs: FsSpec {
            root: RootSource::Share {
                tag: vm::ROOT_TAG.into(),
            },
            sys: SysMode::Fresh,
            mounts,
            masked: vec![b"/proc/kcore".to_vec()],
            readonly: vec![b"/proc/sys".to_vec()],
            scratch_size: 64 << 20,
            cgroup2: false,
        },
        loopback_up: true,
        tty: tty.then_some(TtySpec { rows: 24, cols: 80 }),
        confine: Default::default(),
        vm: None,
    };
    let mut started = false;
    let mut status: Option<ExitStatus> = None;
    let mut out_open = [true, true];
    let mut ctl_open = true;
    let mut stdin = Some(stdin);
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if ctl_open { ctl.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if out_open[0] { stdout.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if out_open[1] { stderr.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if !ctl_open && !out_open[0] && !out_open[1] {
            break;
        }
        if status.is_some() && !out_open[0] && !out_open[1] {
            break;
        }
        // SAFETY: valid pollfd array.
        unsafe { libc::poll(fds.as_mut_ptr(), 3, 30_000) };
        let mut buf = [0u8; 65536];
        for (i, (fd, target)) in [(&stdout, 1), (&stderr, 2)].iter().enumerate() {
            if fds[i + 1].revents != 0 {
                // SAFETY: valid buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    eprintln!("PEER end of {}", if i == 0 { "stdout" } else { "stderr" });
                    out_open[i] = false;
                } else {
                    write_all(*target, &buf[..n as usize]);
                }
            }
        }
        if fds[0].revents != 0 {
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(ctl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                eprintln!("PEER control channel closed by the guest");
                ctl_open = false;
                continue;
            }
            if let Err(e) = fb.push(&buf[..n as usize]) {
                eprintln!("PEER bad frame: {e}");
                return 1;
            }
            loop {
                match fb.next_msg::<InitMsg>() {
                    Ok(Some(m)) => {
                        eprintln!("PEER got {m:?}");
                        match m {
                            InitMsg::Hello { version } => {
                                if version != sandbox_proto::PROTOCOL_VERSION {
                                    eprintln!("PEER version mismatch");
                                }
                                send(&ctl, &HostMsg::Start(Box::new(spec.clone())));
                            }
                            InitMsg::Started { .. } => {
                                started = true;
                                if tty {
                                    send(
                                        &ctl,
                                        &HostMsg::Resize {
                                            rows: 40,
                                            cols: 100,
                                        },
                                    );
                                }
                                if let Some(s) = stdin.take() {
                                    // Give a tty reader time to ask first.
                                    std::thread::sleep(std::time::Duration::from_millis(300));
                                    write_all(s.as_raw_fd(), b"ping\n");
                                    // Dropping closes it: end of the command's stdin.
                                }
                            }
                            InitMsg::Exited(st) => status = Some(st),
                            InitMsg::SetupFailed(_) | InitMsg::ExecFailed { .. } => {
                                status = Some(ExitStatus::Code(125))
                            }
                            // The peer sends no exec or probe requests.
                            InitMsg::ExecStarted { .. }
                            | InitMsg::ExecNotStarted { .. }
                            | InitMsg::ExecExited { .. }
                            | InitMsg::Probe { .. } => {}
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("PEER bad message: {e}");
                        return 1;
                    }
                }
            }
        }
    }
    let _ = std::io::stdout().flush();
    drop(ctl);
    eprintln!("PEER done: started={started} status={status:?}");
    match status {
        Some(ExitStatus::Code(c)) => c,
        Some(ExitStatus::Signal(s)) => 128 + s,
        None => 99,
    }
}
