//! The lifecycle state of one sandbox: an explicit enum with the allowed
//! transitions, and the record persisted as `state.json` in its directory.
//!
//! ```text
//!  creating ──> running ──> stopping ──> exited
//!      │           └────────────────────────^
//!      └──────────────────────────────────> exited (start failed)
//! ```
//!
//! Only the supervising launcher writes the record. Whether that launcher
//! still lives is not in the file but in the name lock (`state::NameLock`),
//! which the kernel releases when the launcher dies: a record that says
//! `creating`, `running` or `stopping` while its name is free was left by
//! a crash (shown as `dead` by `ps`, removed by `sandbox gc`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The launcher took the name and is building the sandbox.
    Creating,
    /// The command runs.
    Running,
    /// `sandbox stop` (or a signal) asked the command to end.
    Stopping,
    /// The command ended (kept only for detached runs: their log and
    /// status).
    Exited,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "creating",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Exited => "exited",
        }
    }

    /// Whether `self -> to` is an allowed transition.
    pub fn can_become(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Creating, Running)
                | (Creating, Exited)
                | (Running, Stopping)
                | (Running, Exited)
                | (Stopping, Exited)
        )
    }
}

/// Where the output of a detached sandbox goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// The caller's own stdout/stderr (foreground runs, services).
    Inherited,
    /// journald, with this `SYSLOG_IDENTIFIER`.
    Journald { identifier: String },
    /// The file `log` in the sandbox's state directory.
    File { path: String },
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// `namespace` or `vm`.
    pub backend: String,
    pub state: Phase,
    /// The supervising launcher.
    pub pid: u32,
    /// init's pid on the host (namespace backend).
    pub init_pid: Option<i32>,
    /// Unix seconds.
    pub started_at: f64,
    pub command: Vec<String>,
    /// `--memory` etc. as given (`null` when unset).
    pub limits: Value,
    pub detached: bool,
    pub log: LogTarget,
    /// The receipt's `isolation` while it runs (for `inspect`).
    pub isolation: Value,
    /// Launcher exit status, once exited.
    pub exit_code: Option<i32>,
    /// Unix seconds, once exited.
    pub exited_at: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
#[error("sandbox '{name}': state {} cannot become {}", .from.as_str(), .to.as_str())]
pub struct TransitionError {
    pub name: String,
    pub from: Phase,
    pub to: Phase,
}

impl Record {
    /// Move to `to`, refusing transitions the model does not allow.
    pub fn transition(&mut self, to: Phase) -> Result<(), TransitionError> {
        if !self.state.can_become(to) {
            return Err(TransitionError {
                name: self.name.clone(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use Phase::*;
        let all = [Creating, Running, Stopping, Exited];
        let allowed: Vec<(Phase, Phase)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Creating, Running),
                (Creating, Exited),
                (Running, Stopping),
                (Running, Exited),
                (Stopping, Exited)
            ]
        );
        let mut r = Record {
            name: "a".into(),
            backend: "namespace".into(),
            state: Exited,
            pid: 1,
            init_pid: None,
            started_at: 0.0,
            command: vec![],
            limits: Value::Null,
            detached: false,
            log: LogTarget::Inherited,
            isolation: Value::Null,
            exit_code: None,
            exited_at: None,
        };
        let e = r.transition(Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sandbox 'a': state exited cannot become running"
        );
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"state\":\"exited\""), "{s}");
    }
}
