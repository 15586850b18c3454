//! The caller's terminal: raw mode while a sandbox owns a pty, restored on
//! every exit path (the guard's `Drop`, which also runs during unwinding).

use std::os::fd::RawFd;

/// Rows and columns of the terminal on `fd`, if it is one.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: zeroed winsize is a valid out-parameter.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize struct.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Copy the window size of `from` onto `to` (a pty master); the kernel
/// then sends SIGWINCH to the pty's foreground process group.
pub fn copy_window_size(from: RawFd, to: RawFd) {
    if let Some((rows, cols)) = window_size(from) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct.
        unsafe { libc::ioctl(to, libc::TIOCSWINSZ, &ws) };
    }
}

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// Puts a terminal in raw mode; restores the saved settings when dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Switch `fd` to raw mode, or return `None` if it is not a terminal.
    pub fn enable(fd: RawFd) -> Option<Self> {
        // SAFETY: zeroed termios is a valid out-parameter.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `saved`.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the local copy.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads `raw`.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the settings saved in `enable`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) };
    }
}
