//! `sandbox service install|list|status|remove`: a sandbox as a systemd
//! service. The unit's main process is `sandbox run --name NAME ...` in the
//! foreground, so systemd supervises the launcher and the launcher the
//! sandbox; nothing runs inside but the command (no init system).
//!
//! Unit settings and why (docs/services.md has the whole unit):
//! - `Type=notify`, `NotifyAccess=main`: the launcher sends READY=1 per
//!   `--ready` (default: when the command started);
//! - `KillMode=mixed`: `systemctl stop` sends SIGTERM to the launcher only,
//!   which forwards it to the command; what is left after
//!   `TimeoutStopSec` gets SIGKILL from systemd (the whole cgroup);
//! - `SuccessExitStatus=143`: the launcher exits 128+15 when the command
//!   died of the SIGTERM of a stop, which is a clean stop;
//! - `ExecReload=kill -HUP $MAINPID`: the launcher forwards SIGHUP;
//! - `Delegate=yes`: the unit's cgroup subtree is the launcher's, so the
//!   sandbox's own cgroup (limits) is created inside it;
//! - `Restart=on-failure` (`--restart`), `RestartSec=1s`, and no start rate
//!   limit (`StartLimitIntervalSec=0`): a restart loop is paced, not cut off.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

use crate::cli::{Cli, ServiceCommand};
use crate::errors::EXIT_SANDBOX;

/// First line of every unit we write (how `list` and `remove` know ours).
const MARKER: &str = "# Written by `sandbox service install`";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid service name '{0}': expected 1-63 of A-Z a-z 0-9 _ . - starting with a letter or digit")]
    BadName(String),
    #[error("invalid run options for service '{name}': {reason}")]
    BadRun { name: String, reason: String },
    #[error("service '{name}': {opt} cannot be used in a unit ({why})")]
    Refused {
        name: String,
        opt: &'static str,
        why: &'static str,
    },
    #[error("argument {0:?} is not valid UTF-8; systemd unit files are UTF-8")]
    NotUtf8(OsString),
    #[error("invalid --restart '{0}': expected no, on-success, on-failure, on-abnormal, on-watchdog, on-abort or always")]
    BadRestart(String),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("no unit sandbox-{0}.service written by sandbox (see `sandbox service list`)")]
    NotOurs(String),
    #[error("cannot find the sandbox binary: {0}")]
    Exe(String),
    #[error("cannot run systemctl: {0}")]
    Systemctl(String),
}

pub fn run(cmd: ServiceCommand) -> i32 {
    let r = match cmd {
        ServiceCommand::Install {
            name,
            user_unit,
            enable,
            restart,
            unit_dir,
            args,
        } => install(
            &name,
            user_unit,
            enable,
            restart.as_deref(),
            unit_dir,
            &args,
        ),
        ServiceCommand::List { user_unit } => list(user_unit),
        ServiceCommand::Status { name, user_unit } => status(&name, user_unit),
        ServiceCommand::Remove { name, user_unit } => remove(&name, user_unit),
    };
    r.unwrap_or_else(|e| {
        eprintln!("sandbox: {e}");
        EXIT_SANDBOX
    })
}

fn unit_name(name: &str) -> String {
    format!("sandbox-{name}.service")
}

/// Where units go.
pub fn unit_dir(user: bool) -> PathBuf {
    if !user {
        return PathBuf::from("/etc/systemd/system");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| Path::new(x).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    base.join("systemd/user")
}

/// Quote one word for ExecStart: double quotes, C escapes, `%` and `$`
/// doubled (no specifier or variable expansion).
fn quote(arg: &str) -> String {
    let mut s = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '%' => s.push_str("%%"),
            '$' => s.push_str("$$"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The unit file's text.
pub fn unit_text(name: &str, exe: &Path, args: &[String], restart: &str, user: bool) -> String {
    let mut exec = vec![
        quote(&exe.to_string_lossy()),
        quote("run"),
        quote("--name"),
        quote(name),
    ];
    exec.extend(args.iter().map(|a| quote(a)));
    let env = std::env::var("SANDBOX_INIT")
        .ok()
        .map(|p| format!("Environment={}\n", quote(&format!("SANDBOX_INIT={p}"))))
        .unwrap_or_default();
    format!(
        "{MARKER} ({}); reinstall rather than edit.\n\
         [Unit]\n\
         Description=Sandboxed service {name}\n\
         Documentation=man:sandbox-run(1)\n\
         After=network.target\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         Environment=SANDBOX_CGROUP=delegated\n\
         {env}\
         ExecStart={}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         KillMode=mixed\n\
         KillSignal=SIGTERM\n\
         SuccessExitStatus=143\n\
         TimeoutStopSec=15s\n\
         Restart={restart}\n\
         RestartSec=1s\n\
         Delegate=yes\n\
         \n\
         [Install]\n\
         WantedBy={}\n",
        env!("CARGO_PKG_VERSION"),
        exec.join(" "),
        if user {
            "default.target"
        } else {
            "multi-user.target"
        },
    )
}

fn systemctl(user: bool, args: &[&str]) -> Result<i32, ServiceError> {
    let mut c = Command::new("systemctl");
    if user {
        c.arg("--user");
    }
    let st = c
        .args(args)
        .status()
        .map_err(|e| ServiceError::Systemctl(e.to_string()))?;
    Ok(st.code().unwrap_or(EXIT_SANDBOX))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ServiceError + '_ {
    move |e| ServiceError::Io {
        path: path.into(),
        reason: crate::errors::io_reason(&e),
    }
}

/// Validate the run options exactly as `sandbox run` would.
fn check_run(name: &str, args: &[String]) -> Result<(), ServiceError> {
    let mut argv: Vec<String> = vec!["sandbox".into(), "run".into(), "--name".into(), name.into()];
    argv.extend(args.iter().cloned());
    let cli = Cli::try_parse_from(&argv).map_err(|e| ServiceError::BadRun {
        name: name.into(),
        reason: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .into(),
    })?;
    let crate::cli::Command::Run(run) = cli.command else {
        return Ok(());
    };
    let refuse = |opt, why| ServiceError::Refused {
        name: name.into(),
        opt,
        why,
    };
    if run.detach {
        return Err(refuse(
            "--detach",
            "systemd supervises the launcher in the foreground",
        ));
    }
    if run.tty {
        return Err(refuse("--tty", "a service has no terminal"));
    }
    let bad = |reason: String| ServiceError::BadRun {
        name: name.into(),
        reason,
    };
    let ready = match &run.ready {
        Some(r) => Some(crate::lifecycle::notify::Ready::parse(r).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let spec = crate::spec::resolve(&run, &crate::spec::Caller::current())
        .map_err(|e| bad(e.to_string()))?;
    if spec.vm && ready == Some(crate::lifecycle::notify::Ready::Notify) {
        return Err(bad(crate::lifecycle::notify::VM_NOTIFY_REFUSED.into()));
    }
    Ok(())
}

fn install(
    name: &str,
    user: bool,
    enable: bool,
    restart: Option<&str>,
    dir: Option<PathBuf>,
    args: &[OsString],
) -> Result<i32, ServiceError> {
    if crate::spec::check_name(name).is_err() {
        return Err(ServiceError::BadName(name.into()));
    }
    let restart = restart.unwrap_or("on-failure");
    let policies = [
        "no",
        "on-success",
        "on-failure",
        "on-abnormal",
        "on-watchdog",
        "on-abort",
        "always",
    ];
    if !policies.contains(&restart) {
        return Err(ServiceError::BadRestart(restart.into()));
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| ServiceError::NotUtf8(a.clone()))
        })
        .collect::<Result<_, _>>()?;
    if args
        .iter()
        .any(|a| a == "--name" || a == "-n" || a.starts_with("--name="))
    {
        return Err(ServiceError::Refused {
            name: name.into(),
            opt: "--name",
            why: "the service's name is the sandbox's",
        });
    }
    check_run(name, &args)?;
    let exe = std::env::current_exe().map_err(|e| ServiceError::Exe(e.to_string()))?;
    let load = dir.is_none();
    let dir = dir.unwrap_or_else(|| unit_dir(user));
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(unit_name(name));
    let text = unit_text(name, &exe, &args, restart, user);
    let tmp = dir.join(format!(".{}.tmp", unit_name(name)));
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    println!("{}", path.display());
    if !load {
        return Ok(0);
    }
    let code = systemctl(user, &["daemon-reload"])?;
    if code != 0 || !enable {
        return Ok(code);
    }
    systemctl(user, &["enable", &unit_name(name)])
}

fn ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARKER))
}

fn list(user: bool) -> Result<i32, ServiceError> {
    let dir = unit_dir(user);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| ours(&e.path()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter_map(|f| {
                    f.strip_prefix("sandbox-")
                        .and_then(|f| f.strip_suffix(".service"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names {
        println!("{n}\t{}", dir.join(unit_name(&n)).display());
    }
    Ok(0)
}

fn status(name: &str, user: bool) -> Result<i32, ServiceError> {
    if crate::spec::check_name(name).is_err() {
        return Err(ServiceError::BadName(name.into()));
    }
    if !ours(&unit_dir(user).join(unit_name(name))) {
        return Err(ServiceError::NotOurs(name.into()));
    }
    systemctl(user, &["status", "--no-pager", &unit_name(name)])
}

fn remove(name: &str, user: bool) -> Result<i32, ServiceError> {
    if crate::spec::check_name(name).is_err() {
        return Err(ServiceError::BadName(name.into()));
    }
    let path = unit_dir(user).join(unit_name(name));
    if !ours(&path) {
        return Err(ServiceError::NotOurs(name.into()));
    }
    // Stopped and disabled first; a failure there (not loaded) is fine.
    let _ = systemctl(user, &["disable", "--now", &unit_name(name)]);
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    systemctl(user, &["daemon-reload"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_nothing_to_expand() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("100%$HOME\"\\"), "\"100%%$$HOME\\\"\\\\\"");
    }

    #[test]
    fn unit_has_the_settings() {
        let t = unit_text(
            "web",
            Path::new("/usr/bin/sandbox"),
            &["--memory".into(), "64m".into(), "--".into(), "httpd".into()],
            "on-failure",
            false,
        );
        assert!(t.starts_with(MARKER));
        for line in [
            "Type=notify",
            "KillMode=mixed",
            "Delegate=yes",
            "Restart=on-failure",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "ExecStart=\"/usr/bin/sandbox\" \"run\" \"--name\" \"web\" \"--memory\" \"64m\" \"--\" \"httpd\"",
            "WantedBy=multi-user.target",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in\n{t}");
        }
    }
}
