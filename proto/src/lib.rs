//! The launcher <-> `sandbox-init` protocol, shared by both backends.
//!
//! Transport: a byte stream (a `socketpair` in the namespace backend, vsock
//! in the micro-VM backend). Each message is one *frame*: a little-endian
//! `u32` payload length followed by a [postcard] payload. Frames larger than
//! [`MAX_FRAME`] are refused before any allocation of that size happens.
//!
//! Trust: in the VM backend the init side runs inside the guest, so the
//! launcher must treat every [`InitMsg`] as hostile input. [`FrameBuf`] and
//! [`decode`] never panic on any input (fuzzed in `fuzz/`).
//!
//! Sequence of one run:
//! 1. init -> [`InitMsg::Hello`] (protocol version check),
//! 2. launcher -> [`HostMsg::Start`] with the whole [`InitSpec`],
//! 3. init -> [`InitMsg::Started`] (or [`InitMsg::SetupFailed`] /
//!    [`InitMsg::ExecFailed`] and exit),
//! 4. any number of [`HostMsg::Signal`] / [`HostMsg::Resize`],
//!    and, while the command runs (lifecycle, `sandbox exec` and
//!    readiness probes): [`HostMsg::Exec`] -> [`InitMsg::ExecStarted`] or
//!    [`InitMsg::ExecNotStarted`], later [`InitMsg::ExecExited`];
//!    [`HostMsg::ExecSignal`], [`HostMsg::ExecResize`] (a VM exec's pty);
//!    [`HostMsg::ProbeTcp`] -> [`InitMsg::Probe`],
//! 5. init -> [`InitMsg::Exited`], then init exits (in a VM: waits for the
//!    launcher to close the channel, then reboots the guest; see [`vm`]).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod spec;
pub use spec::*;
pub mod unix;
pub mod vm;

/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 8;

/// Largest frame either side accepts (argv + environment can approach
/// `ARG_MAX`, 2 MiB on Linux, so leave room above that).
pub const MAX_FRAME: usize = 8 << 20;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Messages from the launcher to init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Set up the sandbox and start the command. Descriptors referenced by
    /// `Mount::Prepared` are attached to this frame (`SCM_RIGHTS`).
    Start(Box<InitSpec>),
    /// Deliver this signal to the command.
    Signal(i32),
    /// The caller's terminal changed size (used where init owns the pty).
    Resize { rows: u16, cols: u16 },
    /// Start one more process in the running sandbox with the command's
    /// confinement (`sandbox exec`). Without a pty, its stdin, stdout and
    /// stderr are attached to this frame (`SCM_RIGHTS`, three fds). In a
    /// VM nothing can be attached: init connects the vsock ports
    /// [`vm::exec_ports`]`(id)` instead, with or without a pty.
    Exec { id: u32, spec: Box<ExecSpec> },
    /// Deliver a signal to the exec'd process `id`.
    ExecSignal { id: u32, sig: i32 },
    /// The size of exec `id`'s pty changed (VM backend, where init keeps
    /// the master; elsewhere the client holds it and resizes it itself).
    ExecResize { id: u32, rows: u16, cols: u16 },
    /// Does a TCP connection to 127.0.0.1:`port` inside the sandbox
    /// succeed? (readiness `--ready tcp:PORT`)
    ProbeTcp { port: u16 },
}

/// What differs between the command and a process `sandbox exec` adds;
/// everything else (namespaces, cgroup, user namespace, capabilities,
/// Landlock, seccomp, label) is the command's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    pub argv: Vec<Vec<u8>>,
    /// The complete environment (the launcher merges the command's with
    /// the caller's `-e`).
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    /// Ids inside the command's user namespace; `None`: the command's.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A pty of this size; its master is attached to `ExecStarted`.
    pub tty: Option<TtySpec>,
}

/// Why an exec'd process did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecFailure {
    Setup(SetupError),
    Exec {
        program: Vec<u8>,
        errno: i32,
        not_found: bool,
    },
}

/// Messages from init to the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitMsg {
    /// First message init sends.
    Hello { version: u32 },
    /// The command was executed successfully. When `pty` is true the
    /// namespace backend attaches the pty master fd to this frame
    /// (`SCM_RIGHTS`).
    Started {
        pid: i32,
        pty: bool,
        enforced: Enforced,
    },
    /// A setup step failed; init exits after sending this.
    SetupFailed(SetupError),
    /// The command could not be executed (exit status 126/127).
    ExecFailed {
        program: Vec<u8>,
        errno: i32,
        not_found: bool,
    },
    /// The command ended; every other process in the sandbox is gone.
    Exited(ExitStatus),
    /// The exec'd process `id` runs (with a pty: its master is attached).
    ExecStarted { id: u32, pid: i32, pty: bool },
    /// The exec'd process `id` could not be started.
    ExecNotStarted { id: u32, failure: ExecFailure },
    /// The exec'd process `id` ended.
    ExecExited { id: u32, status: ExitStatus },
    /// Answer to [`HostMsg::ProbeTcp`].
    Probe { port: u16, open: bool },
}

/// What init could enforce, where the host kernel decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Enforced {
    /// Landlock ABI version applied; 0 when Landlock was not applied.
    pub landlock_abi: u32,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Normal exit with this code (0..=255).
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

/// A structured setup failure: which step, on which path, with which errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupError {
    /// Name of the setup step (see `docs/design.md`, "Setup steps").
    pub step: String,
    /// The path the step was working on, if any (raw bytes).
    pub path: Option<Vec<u8>>,
    /// The errno, 0 when the failure was not a system call.
    pub errno: i32,
    /// Extra human-readable detail (may be empty).
    pub detail: String,
}

/// Errors of framing and decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    FrameTooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encode one message as a complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut out = postcard::to_extend(msg, out).map_err(|e| ProtoError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge { len });
    }
    // Cannot truncate: len <= MAX_FRAME < u32::MAX.
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decode one payload (without the header). Trailing bytes are an error so
/// that a frame means exactly one message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the stream. Refuses to grow beyond one
    /// maximal frame plus its header, so a peer cannot make us buffer
    /// without bound.
    pub fn push(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        if self.buf.len() + data.len() > MAX_FRAME + HEADER_LEN {
            // A complete frame could still be inside; only fail once the
            // declared length itself is invalid or the buffer is full of
            // an incomplete frame.
            self.check_header()?;
            if self.buf.len() + data.len() > 2 * (MAX_FRAME + HEADER_LEN) {
                return Err(ProtoError::FrameTooLarge {
                    len: self.buf.len() + data.len(),
                });
            }
        }
        self.buf.extend_from_slice(data);
        self.check_header()
    }

    fn check_header(&self) -> Result<(), ProtoError> {
        if let Some(len) = self.declared_len() {
            if len > MAX_FRAME {
                return Err(ProtoError::FrameTooLarge { len });
            }
        }
        Ok(())
    }

    fn declared_len(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_le_bytes(header) as usize)
    }

    /// Take the next complete payload out of the buffer, if there is one.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, ProtoError> {
        let Some(len) = self.declared_len() else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(ProtoError::FrameTooLarge { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// Decode the next complete message, if there is one.
    pub fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        match self.next_payload()? {
            Some(p) => decode(&p).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet forming a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_spec() -> InitSpec {
        InitSpec {
            argv: vec![b"/bin/echo".to_vec(), vec![0xff, 0xfe, b'x']],
            env: vec![b"PATH=/usr/bin".to_vec()],
            ..InitSpec::default()
        }
    }

    #[test]
    fn roundtrip_all_messages() {
        let host = [
            HostMsg::Start(Box::new(sample_spec())),
            HostMsg::Signal(15),
            HostMsg::Resize { rows: 24, cols: 80 },
            HostMsg::Exec {
                id: 7,
                spec: Box::new(ExecSpec {
                    argv: vec![b"/bin/true".to_vec()],
                    uid: Some(0),
                    tty: Some(TtySpec { rows: 1, cols: 2 }),
                    ..ExecSpec::default()
                }),
            },
            HostMsg::ExecSignal { id: 7, sig: 15 },
            HostMsg::ExecResize {
                id: 7,
                rows: 50,
                cols: 132,
            },
            HostMsg::ProbeTcp { port: 8080 },
        ];
        let mut fb = FrameBuf::new();
        for m in &host {
            fb.push(&encode(m).unwrap()).unwrap();
        }
        for m in &host {
            assert_eq!(fb.next_msg::<HostMsg>().unwrap().as_ref(), Some(m));
        }
        assert_eq!(fb.next_msg::<HostMsg>().unwrap(), None);
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn share_variants_roundtrip() {
        let mut spec = sample_spec();
        spec.fs.root = RootSource::Share {
            tag: vm::ROOT_TAG.into(),
        };
        spec.fs.mounts = vec![
            Mount::Share {
                tag: vm::volume_tag(0),
                dst: b"/srv/data".to_vec(),
                readonly: false,
            },
            Mount::Tmpfs {
                dst: b"/scratch".to_vec(),
                size: None,
                mode: 0o700,
            },
            Mount::Share {
                tag: vm::volume_tag(1),
                dst: vec![b'/', 0xff],
                readonly: true,
            },
        ];
        let msg = HostMsg::Start(Box::new(spec));
        let frame = encode(&msg).unwrap();
        assert_eq!(decode::<HostMsg>(&frame[HEADER_LEN..]).unwrap(), msg);
        // Every strict prefix of the payload is refused, never a panic.
        for cut in 0..frame.len() - HEADER_LEN {
            assert!(decode::<HostMsg>(&frame[HEADER_LEN..HEADER_LEN + cut]).is_err());
        }
    }

    #[test]
    fn vm_constants() {
        assert_eq!(vm::volume_tag(0), "vol0");
        assert_eq!(vm::volume_tag(12), "vol12");
        assert_eq!(vm::HOST_CID, 2);
        assert_eq!(vm::GUEST_CID, 3);
        let ports = [
            vm::CONTROL_PORT,
            vm::STDIN_PORT,
            vm::STDOUT_PORT,
            vm::STDERR_PORT,
        ];
        assert_eq!(ports, [1024, 1025, 1026, 1027]);
        // Exec triples sit above the fixed ports, never overlap, and the
        // largest id does not overflow.
        assert_eq!(vm::exec_ports(0), [0x1_0000, 0x1_0001, 0x1_0002]);
        assert_eq!(vm::exec_ports(1)[0], vm::exec_ports(0)[2] + 1);
        assert_eq!(vm::exec_ports(vm::EXEC_PORT_SLOTS), vm::exec_ports(0));
        assert!(vm::exec_ports(u32::MAX)[2] > vm::STDERR_PORT);
        assert!(vm::ROOT_TAG.len() <= vm::MAX_TAG_LEN);
        assert!(vm::volume_tag(usize::MAX).len() <= vm::MAX_TAG_LEN);
        assert!(vm::INIT_VM_ARG.starts_with("--"));
    }

    #[test]
    fn byte_by_byte_delivery() {
        let msg = InitMsg::SetupFailed(SetupError {
            step: "bind-volume".into(),
            path: Some(b"/srv".to_vec()),
            errno: 2,
            detail: String::new(),
        });
        let frame = encode(&msg).unwrap();
        let mut fb = FrameBuf::new();
        for (i, b) in frame.iter().enumerate() {
            fb.push(&[*b]).unwrap();
            let got = fb.next_msg::<InitMsg>().unwrap();
            if i + 1 < frame.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(msg.clone()));
            }
        }
    }

    #[test]
    fn exec_messages_roundtrip() {
        let msgs = [
            InitMsg::ExecStarted {
                id: 1,
                pid: 9,
                pty: true,
            },
            InitMsg::ExecNotStarted {
                id: 1,
                failure: ExecFailure::Exec {
                    program: b"x".to_vec(),
                    errno: 2,
                    not_found: true,
                },
            },
            InitMsg::ExecExited {
                id: 1,
                status: ExitStatus::Signal(9),
            },
            InitMsg::Probe {
                port: 80,
                open: false,
            },
        ];
        for m in &msgs {
            let f = encode(m).unwrap();
            assert_eq!(&decode::<InitMsg>(&f[HEADER_LEN..]).unwrap(), m);
        }
    }

    #[test]
    fn oversized_header_is_refused_without_allocation() {
        let mut fb = FrameBuf::new();
        let err = fb.push(&u32::MAX.to_le_bytes()).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = encode(&InitMsg::Hello { version: 1 }).unwrap();
        frame.push(0);
        assert!(decode::<InitMsg>(&frame[HEADER_LEN..]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic sweep; the fuzz target covers the rest.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut data = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            let _ = decode::<InitMsg>(&data);
            let _ = decode::<HostMsg>(&data);
        }
    }
}
