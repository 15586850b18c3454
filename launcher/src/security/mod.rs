//! Backend-neutral confinement of the command: seccomp filters and
//! capabilities. (Landlock and labels follow; see docs/security.md.)

pub mod caps;
pub mod dac;
pub mod seccomp;
pub mod selinux;
