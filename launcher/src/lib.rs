//! The `sandbox` launcher library. See `docs/architecture.md` for the code
//! map; the binary (`main.rs`) only parses the command line and maps the
//! result to an exit status.

pub mod cgroup;
pub mod chan;
pub mod cli;
pub mod container;
pub mod doctor;
pub mod errors;
pub mod fs_share;
pub mod initbin;
pub mod lifecycle;
pub mod net;
pub mod profile;
pub mod receipt;
pub mod run;
pub mod security;
pub mod service;
pub mod session;
pub mod spec;
pub mod state;
pub mod sys;
pub mod tty;
pub mod vm;
