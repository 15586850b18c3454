//! Long-lived sandboxes: the state model and everything that reads it
//! (`sandbox ps`, `inspect`, `stop`, `kill`, `exec`, `logs`, `gc`,
//! `run -d`), the same for both backends.
//!
//! - `dir`: the state directory, created and read by descriptor, safely;
//! - `record`: the state enum (`Phase`) with its allowed transitions and
//!   `state.json`;
//! - `supervisor`: the running launcher's side: `Tracker` (the record,
//!   removed at the end of a foreground run) and `Control` (the control
//!   socket, peer-checked, turning requests into actions for the session
//!   loop);
//! - `wire`: the control socket's messages;
//! - `detach`: `run -d` (fork, log to journald or a file, report start);
//! - `notify`: systemd readiness (`sd_notify`, `--ready`);
//! - `client`: the client commands.
//!
//! Liveness is never read from a file: a sandbox is live while its
//! launcher holds the name lock (`state::NameLock`, an abstract socket the
//! kernel releases when the launcher dies, `state::name_is_live`).

pub mod client;
pub mod detach;
pub mod dir;
pub mod notify;
pub mod record;
pub mod supervisor;
pub mod wire;

use std::time::{Duration, Instant};

use notify::Ready;
use supervisor::{Control, Tracker};

/// How often init is asked whether the `--ready tcp:PORT` port accepts.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// What the session loop does for the lifecycle of one run.
#[derive(Debug)]
pub struct Live {
    pub tracker: Option<Tracker>,
    pub control: Option<Control>,
    pub detach: Option<detach::Detached>,
    pub ready: Ready,
    pub notify: Option<notify::Relay>,
    /// READY=1 was sent (and the detached caller released).
    pub is_ready: bool,
    next_probe: Option<Instant>,
}

impl Live {
    pub fn new(ready: Ready) -> Self {
        Live {
            tracker: None,
            control: None,
            detach: None,
            ready,
            notify: None,
            is_ready: false,
            next_probe: None,
        }
    }

    /// The command runs: with the default readiness, it is ready.
    pub fn started(&mut self) {
        self.set(record::Phase::Running);
        match self.ready {
            Ready::Started => self.now_ready(),
            Ready::Tcp(_) => self.next_probe = Some(Instant::now()),
            Ready::Notify => {}
        }
    }

    pub fn set(&mut self, phase: record::Phase) {
        if let Some(t) = self.tracker.as_mut() {
            t.set(phase);
        }
    }

    /// Tell systemd and the detached caller.
    pub fn now_ready(&mut self) {
        if self.is_ready {
            return;
        }
        self.is_ready = true;
        self.next_probe = None;
        notify::sd_notify("READY=1");
        if let Some(d) = self.detach.take() {
            d.started();
        }
    }

    /// A TCP probe is due: returns its port.
    pub fn probe_due(&mut self, now: Instant) -> Option<u16> {
        match (self.ready, self.next_probe) {
            (Ready::Tcp(port), Some(t)) if now >= t => {
                self.next_probe = None;
                Some(port)
            }
            _ => None,
        }
    }

    /// init answered a probe.
    pub fn probed(&mut self, open: bool) {
        if open {
            self.now_ready();
        } else if !self.is_ready {
            self.next_probe = Some(Instant::now() + PROBE_EVERY);
        }
    }

    /// When the loop must wake up next for the lifecycle.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.next_probe
    }

    /// The run ended with `code`: answer clients, persist, release a
    /// detached caller that still waits (the sandbox ended before it was
    /// ready).
    pub fn finish(&mut self, code: i32, message: &str) {
        if let Some(c) = self.control.as_mut() {
            c.finish(code);
        }
        self.control = None;
        if let Some(t) = self.tracker.as_mut() {
            t.finish(code);
        }
        if let Some(d) = self.detach.take() {
            let msg = if message.is_empty() {
                format!("the sandbox ended before it was ready (status {code})")
            } else {
                message.to_string()
            };
            d.failed(
                if code == 0 {
                    crate::errors::EXIT_SANDBOX
                } else {
                    code
                },
                &msg,
            );
        }
    }
}
