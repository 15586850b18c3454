//! Command-line definitions (clap). Also the source of the man page and
//! the shell completions, so the three never disagree.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES_HELP: &str = "\
EXIT STATUS:
  N        the command's own exit status (0-255)
  128+N    the command was killed by signal N
  122      --vm: the guest failed (kernel panic, unexpected reset, triple fault)
  123      the sandbox exceeded its --memory limit and was killed
  124      --timeout expired and the command was stopped
  125      the sandbox itself failed (a one-line reason is printed)
  126      the command was found but could not be executed
  127      the command was not found inside the sandbox";

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    version,
    about = "Run one host program in isolation",
    long_about = "Run one host program in isolation: Linux namespaces with the host \
                  filesystem visible read-only, a private /tmp, /dev and /proc, no network, \
                  and a small init as PID 1.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true,
    disable_help_subcommand = false
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run COMMAND in a new sandbox and wait for it
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// List the sandboxes of this user (running, detached ones that exited,
    /// and dead ones a crash left)
    Ps {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Print the receipt of a running sandbox (JSON)
    Inspect {
        /// The sandbox's name
        name: String,
    },
    /// Run one more command inside a running sandbox, with exactly its
    /// confinement; exits with that command's status
    Exec(ExecArgs),
    /// Stop a sandbox: SIGTERM to its command, SIGKILL to all of it after
    /// the grace period; returns when it has ended
    Stop {
        name: String,
        /// Grace period before SIGKILL (default 10s)
        #[arg(short = 't', long = "time", value_name = "DURATION")]
        time: Option<String>,
    },
    /// Send a signal to a sandbox's command (default KILL: ends the whole
    /// sandbox at once)
    Kill {
        name: String,
        /// A name (TERM, SIGHUP, ...) or a number
        signal: Option<String>,
    },
    /// Print the output of a detached sandbox
    Logs {
        name: String,
        /// Keep printing while the sandbox runs
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Remove what crashed runs left (state directories, cgroups) and the
    /// records of detached sandboxes that exited; prints each item
    Gc,
    /// Run a sandbox as a systemd service (docs/services.md)
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Report which isolation features this host can enforce, and why not
    Doctor {
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Manage micro-VM snapshots (warm guests `run --vm` resumes from)
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print a shell completion script to stdout
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff) to a directory, or sandbox(1) to stdout
    Man {
        /// Directory to write sandbox.1 and sandbox-*.1 into
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `sandbox exec` options.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox's name
    pub name: String,
    /// Connect stdin (else the command reads /dev/null)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set KEY=VALUE, or pass the caller's KEY (added to the command's
    /// environment)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<OsString>,
    /// Working directory inside (default: the command's)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<OsString>,
    /// Ids inside the sandbox: UID[:GID] or root (must be mapped there;
    /// default: the command's)
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]|root")]
    pub user: Option<String>,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `sandbox service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write (and load) a systemd unit sandbox-NAME.service whose main
    /// process is `sandbox run --name NAME [RUN OPTIONS] -- COMMAND`
    Install {
        /// The service's and the sandbox's name
        name: String,
        /// A user unit (~/.config/systemd/user, systemctl --user) instead of
        /// a system one (/etc/systemd/system)
        #[arg(long = "user")]
        user_unit: bool,
        /// Also enable it (start at boot or login)
        #[arg(long)]
        enable: bool,
        /// Restart= of the unit (default on-failure)
        #[arg(long, value_name = "POLICY")]
        restart: Option<String>,
        /// Write the unit to this directory instead (it is not loaded)
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
        /// `sandbox run` options, then `--` and the command
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "RUN OPTIONS -- COMMAND"
        )]
        args: Vec<OsString>,
    },
    /// List the units written by `sandbox service install`
    List {
        #[arg(long = "user")]
        user_unit: bool,
    },
    /// `systemctl status` of the unit
    Status {
        name: String,
        #[arg(long = "user")]
        user_unit: bool,
    },
    /// Stop and disable the unit and delete its file
    Remove {
        name: String,
        #[arg(long = "user")]
        user_unit: bool,
    },
}

/// `sandbox snapshot ...`.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum SnapshotCommand {
    /// Boot a micro-VM to the point where init is ready for a command and
    /// save it as NAME (default: the automatic snapshot of that VM shape).
    /// The run options that shape the VM apply: --kernel, --cpus, --memory,
    /// and the number of volumes
    Create(SnapshotCreateArgs),
    /// List snapshots (name, shape, size on disk, created)
    List {
        /// Print the list as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove the snapshot NAME
    Rm { name: String },
}

/// The run options that shape a micro-VM, for `snapshot create`.
#[derive(Debug, Args, Default)]
pub struct SnapshotCreateArgs {
    /// Snapshot name (A-Z a-z 0-9 . _ -; default: the VM shape's automatic one)
    pub name: Option<String>,
    /// Guest kernel (a vmlinux ELF or a bzImage)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest memory (e.g. 256m, 1g)
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// vCPUs (rounded up)
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Volumes as `run` takes them: their number shapes the VM (one share
    /// each); which host paths they are is chosen by each run
    #[arg(short = 'v', long = "volume", value_name = "HOST[:DEST][:ro|:rw]")]
    pub volume: Vec<OsString>,
}

/// Network modes accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Loopback only (own network namespace)
    None,
    /// The host's network namespace (no network isolation; namespace backend only)
    Host,
    /// Own network namespace with outbound access through a user-mode NAT
    /// (pasta); egress rules with --allow (docs/network.md)
    Nat,
}

/// Seccomp levels accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompArg {
    /// No filter (reported in the receipt)
    Off,
    /// Deny keyrings, bpf, perf, modules, mount API, TIOCSTI, ... (policy/seccomp.toml)
    Default,
    /// The default set plus ptrace, personality, unshare, ...
    Strict,
}

/// Landlock modes accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LandlockArg {
    /// Enforce when the kernel supports it; otherwise report it as not enforced
    Auto,
    /// Fail the run when the kernel cannot enforce it
    Require,
    /// Do not use Landlock (reported in the receipt)
    Off,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Bind a host path: HOST[:DEST][:ro|:rw]; read-only unless :rw
    #[arg(short = 'v', long = "volume", value_name = "HOST[:DEST][:ro|:rw]")]
    pub volume: Vec<OsString>,

    /// Bind SRC to DEST read-write (bubblewrap spelling)
    #[arg(long = "bind", num_args = 2, value_names = ["SRC", "DEST"], action = ArgAction::Append)]
    pub bind: Vec<OsString>,

    /// Bind SRC to DEST read-only (bubblewrap spelling)
    #[arg(long = "ro-bind", num_args = 2, value_names = ["SRC", "DEST"], action = ArgAction::Append)]
    pub ro_bind: Vec<OsString>,

    /// Mount a fresh tmpfs: DEST[:size=N][,mode=OCTAL]
    #[arg(long = "tmpfs", value_name = "DEST[:size=N]")]
    pub tmpfs: Vec<OsString>,

    /// Working directory inside (default: the current directory)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<OsString>,

    /// Set KEY=VALUE, or pass the caller's KEY
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<OsString>,

    /// Run as UID[:GID] or root (default: your own uid/gid)
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]|root")]
    pub user: Option<String>,

    /// Hostname inside (default: the sandbox name)
    #[arg(long)]
    pub hostname: Option<String>,

    /// Sandbox name (default: a unique generated id)
    #[arg(short = 'n', long)]
    pub name: Option<String>,

    /// Detach: print the name once the sandbox runs (and is ready) and
    /// return; its output goes to journald, or to `sandbox logs`
    #[arg(short = 'd', long, conflicts_with = "tty")]
    pub detach: bool,

    /// When the sandbox counts as ready (systemd READY=1, `run -d`
    /// returning): started (default), tcp:PORT (127.0.0.1:PORT inside
    /// accepts), or notify (the command gets $NOTIFY_SOCKET)
    #[arg(long, value_name = "started|tcp:PORT|notify")]
    pub ready: Option<String>,

    /// Network: none (loopback only, the default), nat (outbound through
    /// NAT; the host's addresses, loopback and link-local stay blocked) or
    /// host
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<NetworkArg>,

    /// With --network nat: allow egress to RULE only (repeatable): a CIDR,
    /// an address, HOST:PORT[-PORT], a port or port range, or a DNS name
    /// (*.NAME for names below it); /tcp or /udp may follow
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,

    /// With --network nat: forward [HOSTADDR:]HOSTPORT to PORT in the
    /// sandbox (repeatable; /tcp, the default, or /udp)
    #[arg(long = "publish", value_name = "[HOSTADDR:]HOSTPORT:PORT[/PROTO]")]
    pub publish: Vec<String>,

    /// With --network nat: report refused connections and DNS names on stderr
    #[arg(long = "log-denied")]
    pub log_denied: bool,

    /// Give the command a terminal (default: when stdin is a terminal)
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,

    /// Never give the command a terminal
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,

    /// Keep stdin connected (always the case; accepted for docker habits)
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Run in a KVM micro-VM of our own instead of namespaces: our guest
    /// kernel, the host shared in read-only, the same init (docs/vm.md)
    #[arg(long)]
    pub vm: bool,

    /// Guest kernel for --vm (a vmlinux ELF or a bzImage)
    #[arg(long, value_name = "PATH", requires = "vm")]
    pub kernel: Option<PathBuf>,

    /// --vm: boot the kernel (the default)
    #[arg(long, requires = "vm", conflicts_with_all = ["from", "warm"])]
    pub cold: bool,

    /// --vm: resume this VM shape's automatic snapshot, made on first use
    /// (opt-in while resumes have known faults; docs/snapshots.md)
    #[arg(long, requires = "vm", conflicts_with = "from")]
    pub warm: bool,

    /// --vm: resume the snapshot NAME (made by `sandbox snapshot create`)
    #[arg(long, value_name = "NAME", requires = "vm")]
    pub from: Option<String>,

    /// Memory limit of the whole sandbox, swap included (e.g. 512m, 2g);
    /// exceeding it kills the sandbox (exit status 123)
    #[arg(short = 'm', long, value_name = "SIZE", allow_negative_numbers = true)]
    pub memory: Option<String>,

    /// CPU bandwidth limit in CPUs, fractions allowed (e.g. 0.5, 2)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub cpus: Option<String>,

    /// Maximum number of processes and threads in the sandbox
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pids: Option<String>,

    /// Relative I/O weight, 1-10000 (default 100)
    #[arg(long = "io-weight", value_name = "N", allow_negative_numbers = true)]
    pub io_weight: Option<String>,

    /// Seccomp filter: default (deny dangerous calls), strict, or off
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub seccomp: Option<SeccompArg>,

    /// Landlock: auto (use it when the kernel has it, report when not),
    /// require (fail without it), or off
    #[arg(long, value_enum, value_name = "MODE")]
    pub landlock: Option<LandlockArg>,

    /// SELinux label of the command: dynamic (a unique MCS pair),
    /// static:CONTEXT, inherit, or none (default)
    #[arg(long = "security-label", value_name = "MODE")]
    pub security_label: Option<String>,

    /// Keep this capability in the command's user namespace; repeatable.
    /// Default: none. Only capabilities that can act there are accepted
    /// (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, KILL, SETGID,
    /// SETUID, SETPCAP, SETFCAP, SYS_CHROOT, SYS_PTRACE). As root every host
    /// uid is mapped into the sandbox, so they apply to all files visible
    /// inside
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,

    /// Stop the command after DURATION (e.g. 30s, 5m, 1h30m): SIGTERM,
    /// then SIGKILL after --kill-after; exit status 124
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true)]
    pub timeout: Option<String>,

    /// Grace period between SIGTERM and SIGKILL on timeout (default 5s)
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true)]
    pub kill_after: Option<String>,

    /// Profile: a name (looked up in ~/.config/sandbox, /etc/sandbox, then
    /// the built-in ones) or a path to a .toml file
    #[arg(short = 'p', long, value_name = "NAME|PATH")]
    pub profile: Option<String>,

    /// Write a JSON record of the run to this open file descriptor
    #[arg(long, value_name = "FD")]
    pub json_status_fd: Option<i32>,

    /// Write a JSON record of the run to FILE
    #[arg(long, value_name = "FILE")]
    pub receipt: Option<PathBuf>,

    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,

    /// The order in which the mount options were typed (filled from the
    /// parser's argument indices; empty means "grouped by option").
    #[arg(skip)]
    pub mount_order: Vec<MountOpt>,
}

/// One mount option occurrence: which option and its position among the
/// values of that option (for `--bind`/`--ro-bind`, the pair number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOpt {
    Volume(usize),
    Bind(usize),
    RoBind(usize),
    Tmpfs(usize),
}

impl RunArgs {
    /// Mount options in the order they apply.
    pub fn ordered_mounts(&self) -> Vec<MountOpt> {
        if !self.mount_order.is_empty() {
            return self.mount_order.clone();
        }
        let mut v: Vec<MountOpt> = (0..self.volume.len()).map(MountOpt::Volume).collect();
        v.extend((0..self.bind.len() / 2).map(MountOpt::Bind));
        v.extend((0..self.ro_bind.len() / 2).map(MountOpt::RoBind));
        v.extend((0..self.tmpfs.len()).map(MountOpt::Tmpfs));
        v
    }
}

/// Recover the typed order of mount options from the parser's indices.
pub fn mount_order(m: &clap::ArgMatches) -> Vec<MountOpt> {
    let mut seen: Vec<(usize, MountOpt)> = Vec::new();
    let mut add = |id: &str, step: usize, make: fn(usize) -> MountOpt| {
        if let Some(idx) = m.indices_of(id) {
            for (n, index) in idx.enumerate().filter(|(n, _)| n % step == 0) {
                seen.push((index, make(n / step)));
            }
        }
    };
    add("volume", 1, MountOpt::Volume);
    add("bind", 2, MountOpt::Bind);
    add("ro_bind", 2, MountOpt::RoBind);
    add("tmpfs", 1, MountOpt::Tmpfs);
    seen.sort_by_key(|(i, _)| *i);
    seen.into_iter().map(|(_, o)| o).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_after_the_command_belong_to_it() {
        let cli =
            Cli::try_parse_from(["sandbox", "run", "-e", "A=1", "ls", "-l", "--tty"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.command, ["ls", "-l", "--tty"]);
        assert!(!r.tty);
        assert_eq!(r.env, ["A=1"]);
    }

    #[test]
    fn mount_options_keep_their_order() {
        let argv = [
            "sandbox",
            "run",
            "--tmpfs",
            "/mnt",
            "-v",
            "/etc:/mnt/e",
            "--ro-bind",
            "/a",
            "/b",
            "-v",
            "/x",
            "--",
            "true",
        ];
        let m = Cli::command().get_matches_from(argv);
        let (_, run) = m.subcommand().unwrap();
        assert_eq!(
            mount_order(run),
            [
                MountOpt::Tmpfs(0),
                MountOpt::Volume(0),
                MountOpt::RoBind(0),
                MountOpt::Volume(1)
            ]
        );
    }

    #[test]
    fn bind_takes_two_values() {
        let cli =
            Cli::try_parse_from(["sandbox", "run", "--bind", "/a", "/b", "--", "true"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.bind, ["/a", "/b"]);
    }
}
