//! Profiles: TOML files naming a sandbox's defaults.
//!
//! The shipped profiles (`profiles/*.toml`) are compiled into the binary,
//! so a fresh install works with no files on disk. A profile *name* is
//! looked up in `$XDG_CONFIG_HOME/sandbox/NAME.toml` (default
//! `~/.config/sandbox`), then `/etc/sandbox/NAME.toml`, then the built-in
//! ones; anything containing `/` or ending in `.toml` is a path.
//!
//! Every error names the file, the line and column, and what is accepted.
//! Unknown keys are errors (a typo must never silently weaken a sandbox).
//! Values are only *shape*-checked here; `spec` validates their meaning
//! and reports errors through [`Profile::locate`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Built-in profiles: (name, TOML text).
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../profiles/default.toml")),
    ("strict", include_str!("../../profiles/strict.toml")),
];

/// Largest profile file accepted.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{origin}:{line}:{col}: {msg}")]
    Invalid {
        origin: String,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("profile '{name}' not found (looked in {searched}; built-in profiles: {builtin})")]
    NotFound {
        name: String,
        searched: String,
        builtin: String,
    },
    #[error("cannot read profile {path}: {}", crate::errors::io_reason(.source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {path} is larger than {MAX_PROFILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

/// A profile file's contents. Field names are the TOML keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Free text shown by tools.
    pub description: Option<String>,
    /// `none`, `nat` or `host`.
    pub network: Option<Spanned<String>>,
    /// Egress rules of `network = "nat"`, same syntax as `--allow`.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
    /// `UID[:GID]` or `root`.
    pub user: Option<Spanned<String>>,
    pub workdir: Option<Spanned<String>>,
    /// Force a terminal on (`true`) or off (`false`).
    pub tty: Option<bool>,
    /// `default`, `strict` or `off`.
    pub seccomp: Option<Spanned<String>>,
    /// `auto`, `require` or `off`.
    pub landlock: Option<Spanned<String>>,
    /// `dynamic`, `static:CONTEXT`, `inherit` or `none`.
    pub security_label: Option<Spanned<String>>,
    /// Capabilities kept inside the sandbox's user namespace.
    #[serde(default)]
    pub cap_add: Vec<Spanned<String>>,
    /// Durations such as `30s`, `5m`, `1h30m`.
    pub timeout: Option<Spanned<String>>,
    pub kill_after: Option<Spanned<String>>,
    /// Same syntax as `--volume`.
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    /// Same syntax as `--tmpfs`.
    #[serde(default)]
    pub tmpfs: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: EnvSection,
    #[serde(default)]
    pub filesystem: FsSection,
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Size such as `512m`.
    pub memory: Option<Spanned<String>>,
    /// CPUs as a string or number (`"1.5"`, `2`).
    pub cpus: Option<Spanned<toml::Value>>,
    pub pids: Option<Spanned<i64>>,
    pub io_weight: Option<Spanned<i64>>,
    /// `require` (default: fail when a limit cannot be enforced) or
    /// `best-effort` (run, and report it on stderr and in the receipt).
    pub enforce: Option<Spanned<String>>,
}

/// `[env]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSection {
    /// Caller variables allowed through; a trailing `*` matches a prefix
    /// (`LC_*`). Replaces the built-in allow-list when given.
    pub pass: Option<Vec<Spanned<String>>>,
    /// Variables set for the command.
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
}

/// `[filesystem]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsSection {
    /// Extra paths to hide (in addition to the built-in list).
    #[serde(default)]
    pub mask: Vec<Spanned<String>>,
    /// Size limit of the private /tmp, /run and /dev/shm (e.g. `256m`).
    pub scratch_size: Option<Spanned<String>>,
}

/// A loaded profile and where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub name: String,
    /// `builtin:NAME` or the file path.
    pub origin: String,
    text: String,
    pub profile: Profile,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.origin)
    }
}

impl Loaded {
    /// An error about a value at `span` of this profile.
    pub fn error_at(&self, span: std::ops::Range<usize>, msg: impl Into<String>) -> ProfileError {
        let (line, col) = line_col(&self.text, span.start);
        ProfileError::Invalid {
            origin: self.origin.clone(),
            line,
            col,
            msg: msg.into(),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

/// Parse profile text. `origin` names it in errors.
pub fn parse(name: &str, origin: &str, text: String) -> Result<Loaded, ProfileError> {
    match toml::from_str::<Profile>(&text) {
        Ok(profile) => Ok(Loaded {
            name: name.into(),
            origin: origin.into(),
            text,
            profile,
        }),
        Err(e) => {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(&text, s.start));
            Err(ProfileError::Invalid {
                origin: origin.into(),
                line,
                col,
                // One line: toml's messages may span several.
                msg: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
            })
        }
    }
}

fn read_file(path: &Path) -> Result<String, ProfileError> {
    let meta = std::fs::metadata(path).map_err(|source| ProfileError::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge { path: path.into() });
    }
    std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.into(),
        source,
    })
}

/// The directories searched for a profile name, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => dirs.push(PathBuf::from(x).join("sandbox")),
        None => {
            if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                dirs.push(PathBuf::from(h).join(".config/sandbox"));
            }
        }
    }
    dirs.push(PathBuf::from("/etc/sandbox"));
    dirs
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Load a profile by name or path (`None`: the default profile).
pub fn load(spec: Option<&str>) -> Result<Loaded, ProfileError> {
    let name = spec.unwrap_or("default");
    if name.contains('/') || name.ends_with(".toml") {
        let path = Path::new(name);
        let text = read_file(path)?;
        let stem = path
            .file_stem()
            .map_or(name.into(), |s| s.to_string_lossy().into_owned());
        return parse(&stem, &path.display().to_string(), text);
    }
    let builtin_names = || {
        BUILTIN
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !valid_name(name) {
        return Err(ProfileError::NotFound {
            name: name.into(),
            searched: "nowhere: a profile name is letters, digits, '-', '_' and '.'".into(),
            builtin: builtin_names(),
        });
    }
    let dirs = search_dirs();
    for dir in &dirs {
        let path = dir.join(format!("{name}.toml"));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return parse(name, &path.display().to_string(), read_file(&path)?),
            // Not there, or a directory we cannot even search (another
            // user's HOME): nothing to read at this location.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(source) => return Err(ProfileError::Read { path, source }),
        }
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return parse(name, &format!("builtin:{name}"), (*text).to_string());
    }
    Err(ProfileError::NotFound {
        name: name.into(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        builtin: builtin_names(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse() {
        for (name, text) in BUILTIN {
            parse(name, name, (*text).to_string()).unwrap();
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse(
            "t",
            "t.toml",
            "hostname = \"a\"\nnetwrok = \"none\"\n".into(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.toml:2:1: "), "{msg}");
        assert!(msg.contains("netwrok"), "{msg}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = parse("t", "t.toml", "[env]\npass = \"PATH\"\n".into()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.toml:2:8: "), "{msg}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = parse("t", "t.toml", "volumes = [\n".into()).unwrap_err();
        assert!(err.to_string().starts_with("t.toml:"), "{err}");
    }

    #[test]
    fn error_at_points_to_value() {
        let l = parse("t", "t.toml", "\n\ntimeout = \"xx\"\n".into()).unwrap();
        let span = l.profile.timeout.as_ref().unwrap().span();
        assert_eq!(l.error_at(span, "bad").to_string(), "t.toml:3:11: bad");
    }
}
