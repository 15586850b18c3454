//! Where snapshots live and how they are written and read.
//!
//! A snapshot is a directory `ROOT/NAME/` holding `state` (the state
//! file, `format`) and one memory file `memory-<ms>-<pid>` named by the
//! state. ROOT is `$SANDBOX_SNAPSHOT_DIR`, else
//! `$XDG_STATE_HOME/sandbox/snapshots`, else
//! `~/.local/state/sandbox/snapshots`; directories are created mode 0700.
//!
//! Writing is crash-safe: the new memory file is written under a fresh
//! name and fsynced, then the state file goes to a temporary name, is
//! fsynced and renamed over `state` (and the directory fsynced). A kill at
//! any point leaves either the old state naming the old memory file (still
//! there) or the new one: never a state naming a missing or partial
//! memory file. Memory files no state names are removed by the next
//! successful write once they are ten minutes old (a concurrent writer's
//! file is younger).
//!
//! Reading: the state file is opened without following symlinks, read up
//! to its size limit, decoded and checked (`format`), then the memory file
//! it names is opened (no symlinks, a regular file of exactly the stated
//! length). Memory files are never written after their creation; resumed
//! machines map them private and copy-on-write.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::format::{self, Checked, FormatError, Snapshot, HEADER_LEN, MAX_STATE_BYTES};
use crate::vm::virtio::Mem;

pub const STATE_FILE: &str = "state";
/// Orphaned memory files younger than this may belong to a writer still
/// at work.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "snapshot name {0:?} is not accepted: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with \
         '.' or '-'"
    )]
    Name(String),
    #[error("no directory for snapshots: set SANDBOX_SNAPSHOT_DIR, XDG_STATE_HOME or HOME")]
    NoRoot,
    #[error("no snapshot named {0:?} (see `sandbox snapshot list`)")]
    Missing(String),
    #[error("snapshot {name:?} is refused: {err}")]
    Format { name: String, err: FormatError },
    #[error("snapshot {name:?}: {what}: {reason}")]
    Io {
        name: String,
        what: String,
        reason: String,
    },
}

fn io(name: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    let what = what.into();
    move |e| StoreError::Io {
        name: name.to_string(),
        what,
        reason: crate::errors::io_reason(&e),
    }
}

/// Accept a snapshot name (it becomes a directory name).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Name(name.to_string()))
    }
}

/// The directory all snapshots live in.
pub fn root() -> Result<PathBuf, StoreError> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("SANDBOX_SNAPSHOT_DIR") {
        return Ok(d);
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return Ok(d.join("sandbox/snapshots"));
    }
    env("HOME")
        .map(|h| h.join(".local/state/sandbox/snapshots"))
        .ok_or(StoreError::NoRoot)
}

/// A snapshot read and checked, with its memory file open.
#[derive(Debug)]
pub struct Loaded {
    pub name: String,
    pub checked: Checked,
    pub memory: File,
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Read the state file of `dir` (at most the format's limit).
pub fn read_state(name: &str, dir: &Path) -> Result<Snapshot, StoreError> {
    let path = dir.join(STATE_FILE);
    let f = match open_nofollow(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(name.to_string()))
        }
        Err(e) => return Err(io(name, format!("cannot open {}", path.display()))(e)),
    };
    let mut bytes = Vec::new();
    // One byte more than the largest valid file, so an oversized one is
    // seen as such without reading it all.
    f.take(HEADER_LEN as u64 + MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io(name, format!("cannot read {}", path.display())))?;
    format::decode(&bytes).map_err(|err| StoreError::Format {
        name: name.to_string(),
        err,
    })
}

/// Load snapshot `name` from `root`: state, checks, memory file.
pub fn load(root: &Path, name: &str, known_msrs: Option<&[u32]>) -> Result<Loaded, StoreError> {
    check_name(name)?;
    let dir = root.join(name);
    let snap = read_state(name, &dir)?;
    let checked = format::check(snap, known_msrs).map_err(|err| StoreError::Format {
        name: name.to_string(),
        err,
    })?;
    let mpath = dir.join(&checked.snapshot.memory_file);
    let memory =
        open_nofollow(&mpath).map_err(io(name, format!("cannot open {}", mpath.display())))?;
    let meta = memory
        .metadata()
        .map_err(io(name, format!("cannot stat {}", mpath.display())))?;
    if !meta.is_file() || meta.len() != checked.snapshot.memory_bytes {
        return Err(StoreError::Format {
            name: name.to_string(),
            err: FormatError::Field(format!(
                "the memory file is {} bytes, the state says {}",
                meta.len(),
                checked.snapshot.memory_bytes
            )),
        });
    }
    Ok(Loaded {
        name: name.to_string(),
        checked,
        memory,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Write `data` to `dir/name` atomically: a temporary file, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8], label: &str) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io(label, format!("cannot create {}", tmp.display())))?;
    let written = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io(label, format!("cannot write {}", tmp.display())));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    test_delay();
    if let Err(e) = std::fs::rename(&tmp, dir.join(name)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(label, format!("cannot rename {}", tmp.display()))(e));
    }
    sync_dir(dir, label)
}

fn sync_dir(dir: &Path, label: &str) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(label, format!("cannot sync {}", dir.display())))
}

/// `SANDBOX_SNAPSHOT_TEST_DELAY_MS`: a pause between writing the new
/// files and the rename, so a test can kill a writer in the middle
/// (tests/tests/lab/vm-e2e.sh). Not part of the stable interface.
fn test_delay() {
    if let Some(ms) = std::env::var("SANDBOX_SNAPSHOT_TEST_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms.min(60_000)));
    }
}

/// Write guest memory to a new file in `dir`: only pages that are not
/// all zeros are written (the file is sparse; guest pages never touched
/// read as zeros). The machine is paused: nothing writes guest memory.
pub fn write_memory(dir: &Path, label: &str, mem: &Mem) -> Result<(String, u64), StoreError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let name = format!("memory-{}-{}", now_ms(), std::process::id());
    let path = dir.join(&name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io(label, format!("cannot create {}", path.display())))?;
    let result = (|| {
        let mut offset = 0u64;
        const PAGE: usize = 4096;
        for region in mem.iter() {
            let len = region.len();
            let host = crate::vm::memory::host_range(mem, region.start_addr().0, len)
                .ok_or_else(|| std::io::Error::other("guest memory region not mapped"))?;
            // SAFETY: `host..host+len` is one live mapping owned by `mem`;
            // the machine is paused and its device workers stopped, so
            // nothing writes it while this shared view exists.
            let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len as usize) };
            let resident = resident_pages(host, len as usize);
            let mut run: Option<usize> = None;
            for (i, page) in bytes.chunks(PAGE).enumerate() {
                // A page never touched is not resident and reads as zeros:
                // skipped without reading it.
                let touched = resident
                    .as_ref()
                    .map_or(true, |r| r.get(i).is_some_and(|b| b & 1 != 0));
                let zero = !touched || is_zero(page);
                match (zero, run) {
                    (false, None) => run = Some(i * PAGE),
                    (true, Some(start)) => {
                        f.write_all_at(&bytes[start..i * PAGE], offset + start as u64)?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(start) = run {
                f.write_all_at(&bytes[start..], offset + start as u64)?;
            }
            offset += len;
        }
        f.set_len(offset)?;
        f.sync_all()?;
        Ok::<u64, std::io::Error>(offset)
    })();
    match result {
        Ok(n) => Ok((name, n)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(io(label, format!("cannot write {}", path.display()))(e))
        }
    }
}

/// Whether the page is all zeros (word by word).
fn is_zero(page: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets
    // the aligned middle of the slice.
    let (head, mid, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// `mincore` of a mapping: one byte per page, bit 0 set when resident.
/// `None` when the kernel refuses (every page is then read).
fn resident_pages(host: *mut u8, len: usize) -> Option<Vec<u8>> {
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: `host..host+len` is one live page-aligned mapping; `v` has
    // one byte per page of it.
    let r = unsafe { libc::mincore(host.cast(), len, v.as_mut_ptr().cast()) };
    (r == 0).then_some(v)
}

/// Save a paused machine as snapshot `name`: its memory, then its state
/// (the memory file's name and length are filled in here).
pub fn save(root: &Path, name: &str, mut snap: Snapshot, mem: &Mem) -> Result<PathBuf, StoreError> {
    check_name(name)?;
    let dir = root.join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(name, format!("cannot create {}", dir.display())))?;
    let (mfile, len) = write_memory(&dir, name, mem)?;
    snap.memory_file = mfile.clone();
    snap.memory_bytes = len;
    snap.created_ms = now_ms();
    let bytes = format::encode(&snap).map_err(|err| StoreError::Format {
        name: name.to_string(),
        err,
    })?;
    if let Err(e) = write_atomic(&dir, STATE_FILE, &bytes, name) {
        let _ = std::fs::remove_file(dir.join(&mfile));
        return Err(e);
    }
    remove_orphans(&dir, &mfile);
    Ok(dir)
}

/// Remove memory files other than `keep` that are old enough.
fn remove_orphans(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        let stale_tmp = n.starts_with('.') && n.contains(".tmp-");
        if n == keep || !(format::memory_file_name_ok(n) || stale_tmp) {
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// One line of `sandbox snapshot list`.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    /// The state, or why it is refused.
    pub state: Result<Snapshot, StoreError>,
    /// Bytes the directory occupies on disk.
    pub disk_bytes: u64,
}

/// Every snapshot under `root`, sorted by name.
pub fn list(root: &Path) -> Result<Vec<Entry>, StoreError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("*", format!("cannot list {}", root.display()))(e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if check_name(&name).is_err() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let disk_bytes = std::fs::read_dir(&dir)
            .map(|d| {
                use std::os::unix::fs::MetadataExt;
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        let state = read_state(&name, &dir);
        out.push(Entry {
            name,
            state,
            disk_bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Remove snapshot `name` (its files, then its directory). Machines
/// resumed from it keep running: their mappings outlive the files.
pub fn remove(root: &Path, name: &str) -> Result<(), StoreError> {
    check_name(name)?;
    let dir = root.join(name);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(name.to_string()))
        }
        Err(e) => return Err(io(name, format!("cannot list {}", dir.display()))(e)),
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n == STATE_FILE || format::memory_file_name_ok(n) || n.starts_with('.') {
            std::fs::remove_file(e.path()).map_err(io(name, format!("cannot remove {n}")))?;
        }
    }
    std::fs::remove_dir(&dir).map_err(io(name, format!("cannot remove {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::snapshot::format::tests::sample;

    fn root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sb-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const MSRS: &[u32] = &[0x10];

    /// A root with snapshot "s" saved from a 256 MiB guest.
    fn with_one(tag: &str) -> (PathBuf, Mem) {
        let r = root(tag);
        let mem = crate::vm::memory::create(256).unwrap();
        save(&r, "s", sample(), &mem).unwrap();
        (r, mem)
    }

    #[test]
    fn save_load_list_remove() {
        let r = root("basic");
        let mem = crate::vm::memory::create(256).unwrap();
        use vm_memory::Bytes;
        mem.write_slice(b"guest data", vm_memory::GuestAddress(0x5000))
            .unwrap();
        let dir = save(&r, "one", sample(), &mem).unwrap();
        let l = load(&r, "one", Some(MSRS)).unwrap();
        assert_eq!(l.checked.snapshot.memory_bytes, 256 << 20);
        let mut buf = [0u8; 10];
        l.memory.read_exact_at(&mut buf, 0x5000).unwrap();
        assert_eq!(&buf, b"guest data");
        // Sparse: far less on disk than the guest's 256 MiB.
        let listed = list(&r).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].state.is_ok());
        assert!(listed[0].disk_bytes < 1 << 20, "{}", listed[0].disk_bytes);
        remove(&r, "one").unwrap();
        assert!(!dir.exists());
        assert!(matches!(load(&r, "one", None), Err(StoreError::Missing(_))));
        assert!(matches!(remove(&r, "one"), Err(StoreError::Missing(_))));
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn an_interrupted_write_leaves_the_previous_snapshot() {
        let (r, mem) = with_one("crash");
        let before = std::fs::read(r.join("s/state")).unwrap();
        // What a writer killed before its rename leaves: a new memory file
        // and a temporary state.
        std::fs::write(r.join("s/memory-1-999"), b"partial").unwrap();
        std::fs::write(r.join("s/.state.tmp-999"), b"half a state").unwrap();
        let l = load(&r, "s", Some(MSRS)).unwrap();
        assert_ne!(l.checked.snapshot.memory_file, "memory-1-999");
        assert_eq!(std::fs::read(r.join("s/state")).unwrap(), before);
        // The next write succeeds; young leftovers are left alone.
        save(&r, "s", sample(), &mem).unwrap();
        assert!(load(&r, "s", Some(MSRS)).is_ok());
        assert!(r.join("s/memory-1-999").exists());
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn refusals() {
        let (r, _mem) = with_one("refuse");
        for bad in ["", ".", "..", "../x", "a/b", "-x", &"x".repeat(65)] {
            assert!(
                matches!(load(&r, bad, None), Err(StoreError::Name(_))),
                "{bad}"
            );
        }
        // A memory file of the wrong length.
        let name = load(&r, "s", Some(MSRS))
            .unwrap()
            .checked
            .snapshot
            .memory_file;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("s").join(&name))
            .unwrap();
        f.set_len(4096).unwrap();
        let e = load(&r, "s", Some(MSRS)).unwrap_err();
        assert!(e.to_string().contains("memory file"), "{e}");
        // A state that is a symlink is not followed.
        std::fs::remove_file(r.join("s/state")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("s/state")).unwrap();
        let e = load(&r, "s", Some(MSRS)).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        // A damaged state is refused with the reason.
        std::fs::remove_file(r.join("s/state")).unwrap();
        std::fs::write(r.join("s/state"), b"SBXSNAP\0garbage").unwrap();
        let e = load(&r, "s", Some(MSRS)).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        let _ = std::fs::remove_dir_all(&r);
    }
}
