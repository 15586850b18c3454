//! Backend-neutral confinement of the command: seccomp filters and
//! capabilities, the Landlock probe, DAC and SELinux labels (see
//! docs/security.md).

pub mod caps;
pub mod dac;
pub mod landlock;
pub mod seccomp;
pub mod selinux;
