//! The fid table: the guest's handles, each naming a [`Node`] and, once
//! opened, the descriptor the I/O goes through.
//!
//! Hostile-input rules: fid numbers are the guest's; at most `max` fids
//! live at once (then EMFILE), NOFID is never a fid, and a fid in use is
//! never silently replaced. A fid holds at most one open descriptor, so
//! the open files are bounded by the fid limit too (the O_PATH
//! descriptors of nodes are bounded by the server's node limit).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::host::SysResult;
use super::node::Node;
use super::wire::NOFID;

/// What a fid is for.
#[derive(Debug)]
pub enum State {
    /// Walked to, not opened.
    Walked,
    /// Opened by Tlopen / Tlcreate.
    Open { fd: OwnedFd },
    /// The answer of Txattrwalk listing no attributes (reads give nothing).
    Xattr,
}

#[derive(Debug)]
pub struct Fid {
    pub node: Arc<Node>,
    pub state: State,
}

impl Fid {
    pub fn walked(node: Arc<Node>) -> Fid {
        Fid {
            node,
            state: State::Walked,
        }
    }

    /// The open descriptor, EBADF if the fid is not open.
    pub fn open_fd(&self) -> SysResult<&OwnedFd> {
        match &self.state {
            State::Open { fd } => Ok(fd),
            _ => Err(libc::EBADF),
        }
    }
}

#[derive(Debug)]
pub struct FidTable {
    map: HashMap<u32, Fid>,
    max: usize,
}

impl FidTable {
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max,
        }
    }

    pub fn get(&self, fid: u32) -> SysResult<&Fid> {
        self.map.get(&fid).ok_or(libc::EBADF)
    }

    pub fn get_mut(&mut self, fid: u32) -> SysResult<&mut Fid> {
        self.map.get_mut(&fid).ok_or(libc::EBADF)
    }

    /// Check that `fid` could be inserted (free, not NOFID, room left).
    pub fn check_free(&self, fid: u32) -> SysResult<()> {
        if fid == NOFID {
            return Err(libc::EBADF);
        }
        if self.map.contains_key(&fid) {
            return Err(libc::EEXIST);
        }
        if self.map.len() >= self.max {
            return Err(libc::EMFILE);
        }
        Ok(())
    }

    /// Insert a new fid (see [`FidTable::check_free`]).
    pub fn insert(&mut self, fid: u32, f: Fid) -> SysResult<()> {
        self.check_free(fid)?;
        self.map.insert(fid, f);
        Ok(())
    }

    pub fn remove(&mut self, fid: u32) -> SysResult<Fid> {
        self.map.remove(&fid).ok_or(libc::EBADF)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.map.values().map(|f| &f.node)
    }
}
