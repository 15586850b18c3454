//! The `sandbox` binary.

use std::io::Write;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use sandbox::cli::{Cli, Command};
use sandbox::errors::EXIT_SANDBOX;
use sandbox::lifecycle::client;

fn main() {
    ensure_stdio();
    let code = match parse() {
        Ok(cli) => match cli.command {
            Command::Run(args) => sandbox::run::run(&args),
            Command::Doctor { json } => sandbox::doctor::run(json),
            Command::Ps { json } => client::ps(json),
            Command::Inspect { name } => client::inspect(&name),
            Command::Exec(a) => client::exec(
                &a.name,
                &client::ExecOpts {
                    interactive: a.interactive,
                    tty: a.tty,
                    env: a.env,
                    workdir: a.workdir,
                    user: a.user,
                    command: a.command,
                },
            ),
            Command::Stop { name, time } => client::stop(&name, time.as_deref()),
            Command::Kill { name, signal } => client::kill(&name, signal.as_deref()),
            Command::Logs { name, follow } => client::logs(&name, follow),
            Command::Gc => client::gc(),
            Command::Service(s) => sandbox::service::run(s),
            Command::Snapshot(cmd) => sandbox::vm::snapshot::cmd::run(cmd),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "sandbox",
                    &mut std::io::stdout(),
                );
                0
            }
            Command::Man { out_dir } => match man(out_dir.as_deref()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sandbox: cannot write the man page: {e:#}");
                    EXIT_SANDBOX
                }
            },
        },
        Err(e) => {
            // Usage errors are sandbox failures (125), like docker and
            // podman; --help and --version succeed.
            let code = if e.use_stderr() { EXIT_SANDBOX } else { 0 };
            let _ = e.print();
            code
        }
    };
    std::process::exit(code);
}

/// Parse the command line, keeping the typed order of mount options.
fn parse() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Run(args), Some(("run", m))) = (&mut cli.command, matches.subcommand()) {
        args.mount_order = sandbox::cli::mount_order(m);
    }
    Ok(cli)
}

/// Make sure fds 0-2 exist, so no file we open lands on them.
fn ensure_stdio() {
    for fd in 0..3 {
        if !sandbox::sys::is_fd_open(fd) {
            // SAFETY: opening /dev/null onto the lowest free fd, which is
            // `fd` because the lower ones are open.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

const EXIT_STATUS_ROFF: &str = r#".SH "EXIT STATUS"
.TP
.B N
the command's own exit status
.TP
.B 128+N
the command was killed by signal N
.TP
.B 122
\-\-vm: the guest itself failed (kernel panic, unexpected reset, triple fault)
.TP
.B 123
the sandbox exceeded its \-\-memory limit and was killed (out of memory)
.TP
.B 124
\-\-timeout expired; the command was stopped (SIGTERM, then SIGKILL after \-\-kill\-after)
.TP
.B 125
the sandbox itself failed; a one\-line reason is printed on stderr
.TP
.B 126
the command was found but could not be executed
.TP
.B 127
the command was not found inside the sandbox
"#;

fn render(cmd: clap::Command, exit_section: bool) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    if exit_section {
        buf.extend_from_slice(EXIT_STATUS_ROFF.as_bytes());
    }
    Ok(buf)
}

fn man(out_dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = out_dir else {
        std::io::stdout().write_all(&render(cmd, true)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("sandbox.1"), render(cmd.clone(), true)?)?;
    for sub in cmd.get_subcommands() {
        let name = format!("sandbox-{}", sub.get_name());
        let page = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        std::fs::write(
            dir.join(format!("{name}.1")),
            render(page, sub.get_name() == "run")?,
        )?;
    }
    Ok(())
}
