//! `sandbox run`: resolve the spec, start the sandbox, supervise it, map
//! the outcome to an exit status and write the receipt.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cgroup::{Cgroup, CgroupError, Usage};
use crate::cli::RunArgs;
use crate::container::Running;
use crate::container::{self, StartError};
use crate::errors::{
    signal_status, EXIT_CANNOT_EXEC, EXIT_GUEST, EXIT_NOT_FOUND, EXIT_OOM, EXIT_SANDBOX,
    EXIT_TIMEOUT,
};
use crate::lifecycle::notify::{self, Ready};
use crate::lifecycle::record::{LogTarget, Phase, Record as StateRecord};
use crate::lifecycle::supervisor::{Control, ExecBase, Tracker};
use crate::lifecycle::{detach, Live};
use crate::receipt::{self, Record};
use crate::security::dac::{self, DacError};
use crate::security::selinux::{self, LabelError, LabelMode};
use crate::session::{self, Outcome};
use crate::spec::{self, Caller, Landlock, MountSpec, Spec, SpecError, User};
use crate::state::{NameLock, StateError};
use crate::{sys, tty};
use sandbox_proto::ExitStatus;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Dac(#[from] DacError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error("invalid --json-status-fd {0}: not an open file descriptor")]
    StatusFd(i32),
    #[error("cannot set up signal handling: {0}")]
    Signals(String),
    #[error(transparent)]
    Ready(#[from] crate::lifecycle::notify::ReadyError),
    #[error(transparent)]
    StateDir(#[from] crate::lifecycle::dir::DirError),
    #[error("{0}")]
    Lifecycle(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Start(StartError::Exec {
                not_found: true, ..
            }) => EXIT_NOT_FOUND,
            RunError::Start(StartError::Exec { .. }) => EXIT_CANNOT_EXEC,
            _ => EXIT_SANDBOX,
        }
    }
}

/// Run and return the process exit status.
pub fn run(args: &RunArgs) -> i32 {
    let t0 = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let caller = Caller::current();
    let mut spec_out = None;
    let mut ctx = RunCtx {
        t0: Some(t0),
        ..RunCtx::default()
    };
    let result = run_inner(args, &caller, &mut spec_out, &mut ctx);
    let mut live = ctx.live.take();
    // A detached child that has not reported yet: its caller (the parent)
    // prints the error, once.
    let reported_by_parent = live.as_ref().is_some_and(|l| l.detach.is_some());

    let (code, status, timed_out) = match &result {
        Ok(o) if ctx.guest_failed => (
            EXIT_GUEST,
            json!({ "guest_failed": o.status.clone().err() }),
            false,
        ),
        Ok(o) => outcome_code(o),
        Err(e) => {
            if !reported_by_parent {
                eprintln!("sandbox: {e}");
            }
            (e.exit_code(), json!({ "error": e.to_string() }), false)
        }
    };
    if let Ok(Outcome {
        status: Err(reason),
        oom: false,
        timed_out: false,
    }) = &result
    {
        eprintln!("sandbox: {reason}");
    }
    if let Ok(o) = &result {
        if o.oom {
            let limit = spec_out.as_ref().and_then(|s| s.limits.memory).unwrap_or(0);
            eprintln!(
                "sandbox: out of memory: the sandbox exceeded its memory limit ({limit} bytes) \
                 and was killed"
            );
        } else if let (true, Err(reason)) = (o.timed_out, &o.status) {
            if reason.starts_with("timed out") {
                // The VM backend: the guest had not reached the command.
                eprintln!("sandbox: {reason}");
            } else {
                eprintln!(
                    "sandbox: timed out; the command ignored SIGTERM and was killed after the \
                     grace period (--kill-after)"
                );
            }
        } else if o.timed_out {
            eprintln!("sandbox: timed out; the command was stopped with SIGTERM");
        }
    }
    let record = Record {
        spec: spec_out.as_ref(),
        enforced: ctx.enforced,
        limits_not_enforced: &ctx.limits_not_enforced,
        label_not_enforced: ctx.label_not_enforced,
        cgroup: ctx.cgroup_info,
        vm: ctx.vm_info,
        name: spec_out.as_ref().map(|s: &Spec| s.name.as_str()),
        argv: &args.command,
        exit_code: code,
        status,
        timed_out,
        wall_time_ms: t0.elapsed().as_secs_f64() * 1000.0,
        started_at,
    }
    .to_json();
    let mut code = code;
    if let Some(l) = live.as_mut() {
        let message = match &result {
            Err(e) => e.to_string(),
            Ok(Outcome {
                status: Err(reason),
                ..
            }) => reason.clone(),
            Ok(_) => String::new(),
        };
        l.finish(code, &message);
    }
    // A foreground run's state directory goes now (a detached run keeps
    // its exited record).
    drop(live);
    if let Some(path) = &args.receipt {
        if let Err(e) = receipt::write_file(path, &record) {
            eprintln!("sandbox: cannot write receipt {}: {}", path.display(), e);
            code = EXIT_SANDBOX;
        }
    }
    if let Some(fd) = args.json_status_fd {
        if sys::is_fd_open(fd) {
            if let Err(e) = receipt::write_fd(fd, &record) {
                eprintln!("sandbox: cannot write the status to fd {fd}: {e}");
                code = EXIT_SANDBOX;
            }
        }
    }
    code
}

/// What the run learned along the way, for the receipt.
#[derive(Debug, Default)]
struct RunCtx {
    enforced: Option<sandbox_proto::Enforced>,
    cgroup_info: Option<Value>,
    limits_not_enforced: Vec<&'static str>,
    /// A label was asked for on a host without SELinux.
    label_not_enforced: bool,
    /// The micro-VM's guest failed (exit status 122).
    guest_failed: bool,
    /// The micro-VM's shape and boot times, for the receipt.
    vm_info: Option<Value>,
    /// When `run` started.
    t0: Option<Instant>,
    /// The lifecycle of this run (state record, control socket, readiness).
    live: Option<Live>,
}

fn outcome_code(o: &Outcome) -> (i32, Value, bool) {
    let (code, status) = match &o.status {
        Ok(ExitStatus::Code(c)) => (*c, json!({ "exited": c })),
        Ok(ExitStatus::Signal(s)) => (signal_status(*s), json!({ "signaled": s })),
        Err(reason) => (EXIT_SANDBOX, json!({ "error": reason })),
    };
    if o.oom {
        (EXIT_OOM, json!({ "out_of_memory": true }), o.timed_out)
    } else if o.timed_out {
        (EXIT_TIMEOUT, status, true)
    } else {
        (code, status, false)
    }
}

fn run_inner(
    args: &RunArgs,
    caller: &Caller,
    spec_out: &mut Option<Spec>,
    ctx: &mut RunCtx,
) -> Result<Outcome, RunError> {
    if let Some(fd) = args.json_status_fd {
        if fd < 0 || !sys::is_fd_open(fd) {
            return Err(RunError::StatusFd(fd));
        }
    }
    let mut spec = spec::resolve(args, caller)?;
    let ready = args
        .ready
        .as_deref()
        .map_or(Ok(Ready::Started), Ready::parse)?;
    if spec.vm && ready == Ready::Notify {
        return Err(RunError::Lifecycle(
            crate::lifecycle::notify::VM_NOTIFY_REFUSED.into(),
        ));
    }
    let _name = NameLock::acquire(&spec.name)?;
    let live = ctx.live.insert(Live::new(ready));
    begin_lifecycle(args, &mut spec, live)?;
    // Block the forwarded signals before the sandbox exists, so none is
    // lost between start and supervision.
    let sigfd = sys::signalfd_for(&session::FORWARDED)
        .map_err(|e| RunError::Signals(crate::errors::io_reason(&e)))?;
    if spec.vm {
        // The VM's supervision loop calls `sandbox_started` when init
        // reports the command started.
        return run_vm(spec_out.insert(spec), &sigfd, ctx);
    }
    let (_dynamic, prepared) = dynamic_user(&mut spec, caller)?;
    let _label = security_label(&mut spec, ctx)?;
    let spec: &Spec = spec_out.insert(spec);
    // Warn before the command can print anything, so the warning is the
    // first line a reader sees. init probes again and reports what it
    // really applied; a feature not warned about here is warned about then.
    let mut warned: Vec<&'static str> = Vec::new();
    if spec.landlock == Landlock::Auto && crate::security::landlock::abi() == 0 {
        warn_not_enforced("landlock");
        warned.push("landlock");
    }
    let before = children_rusage();
    let Started {
        mut running,
        cgroup,
        not_enforced,
    } = start_with_cgroup(spec, prepared)?;
    ctx.enforced = Some(running.enforced);
    ctx.limits_not_enforced = not_enforced;
    if let Some(live) = ctx.live.as_mut() {
        sandbox_started(
            live,
            spec,
            Some(running.init_pid),
            &running.enforced,
            &ctx.limits_not_enforced,
        );
    }
    for feature in receipt::not_enforced(spec, Some(&running.enforced), &[]) {
        if !warned.contains(&feature) {
            warn_not_enforced(feature);
        }
    }
    let _raw = match running.master {
        Some(_) if tty::is_tty(0) => tty::RawMode::enable(0),
        _ => None,
    };
    let outcome = session::supervise(
        &mut running,
        &sigfd,
        spec.timeout,
        spec.kill_after,
        cgroup.as_ref(),
        ctx.live.as_mut(),
    );
    // init has been reaped, and it reaped every process of the sandbox, so
    // the launcher's children rusage covers the whole sandbox.
    // (Minus what helpers forked before the start, e.g. for --user dynamic.)
    let after = children_rusage();
    let (cpu_ms, max_rss_kib) = (((after.0 - before.0) * 1000.0).round() / 1000.0, after.1);
    let cgroup_json = cgroup.as_ref().map(|cg| {
        let usage: Usage = cg.usage();
        json!({
            "version": cg.layout(),
            "path": cg.path(),
            "limits": cg.enforced,
            "not_enforced": cg.not_enforced,
            "peak_memory_bytes": usage.peak_memory_bytes,
            "oom_kills": usage.oom_kills,
            "out_of_memory": outcome.oom,
        })
    });
    ctx.cgroup_info = Some(json!({
        "cpu_time_ms": cpu_ms,
        "max_rss_kib_largest_process": max_rss_kib,
        "cgroup": cgroup_json,
    }));
    Ok(outcome)
}

/// The lifecycle before anything of the sandbox exists: detach (fork),
/// the state directory and record (`creating`), the log, and the notify
/// socket of `--ready notify`. A foreground run without a usable state
/// directory still runs (with a warning: `ps`, `exec` and `stop` will not
/// see it); a detached one, or one that needs the notify socket, fails.
fn begin_lifecycle(args: &RunArgs, spec: &mut Spec, live: &mut Live) -> Result<(), RunError> {
    let ready = live.ready;
    let limits = &spec.limits;
    let record = StateRecord {
        name: spec.name.clone(),
        backend: if spec.vm { "vm" } else { "namespace" }.into(),
        state: Phase::Creating,
        pid: std::process::id(),
        init_pid: None,
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        command: spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        limits: json!({
            "memory": args.memory, "cpus": args.cpus, "pids": args.pids,
            "io_weight": args.io_weight,
            "memory_bytes": limits.memory,
        }),
        detached: args.detach,
        log: LogTarget::Inherited,
        isolation: Value::Null,
        exit_code: None,
        exited_at: None,
    };
    let needed = args.detach || ready == Ready::Notify;
    // Before the fork: a bad state directory is the caller's error.
    let mut tracker = match Tracker::begin(record) {
        Ok(t) => t,
        Err(e) if !needed => {
            eprintln!(
                "sandbox: warning: {e}; `sandbox ps`, `exec` and `stop` will not see this sandbox"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if args.detach {
        // The parent never returns from `fork` (nor drops the tracker).
        live.detach = Some(detach::fork(&spec.name).map_err(RunError::Lifecycle)?);
        spec.tty = false;
        tracker.rec.pid = std::process::id();
        live.tracker = Some(tracker);
        let Some(tracker) = live.tracker.as_mut() else {
            return Ok(());
        };
        tracker.rec.log =
            detach::redirect_output(&spec.name, &tracker.dir).map_err(RunError::Lifecycle)?;
        tracker.save()?;
    } else {
        live.tracker = Some(tracker);
    }
    let Some(tracker) = live.tracker.as_mut() else {
        return Ok(());
    };
    if ready == Ready::Notify {
        let relay = notify::Relay::bind(&tracker.dir.fd_path("notify")).map_err(|e| {
            RunError::Lifecycle(format!(
                "cannot create the notify socket in {}: {}",
                tracker.dir.path().display(),
                crate::errors::io_reason(&e)
            ))
        })?;
        spec.mounts.push(MountSpec::Bind {
            src: tracker.dir.path().join("notify"),
            dst: notify::INNER_SOCKET.into(),
            readonly: false,
        });
        spec.env.retain(|(k, _)| k != "NOTIFY_SOCKET");
        spec.env
            .push(("NOTIFY_SOCKET".into(), notify::INNER_SOCKET.into()));
        live.notify = Some(relay);
    }
    Ok(())
}

/// The command runs: record it, open the control socket, and (default
/// readiness) tell systemd and a detached caller. Both backends (a VM has
/// no host pid for init).
pub(crate) fn sandbox_started(
    live: &mut Live,
    spec: &Spec,
    init_pid: Option<i32>,
    enforced: &sandbox_proto::Enforced,
    limits: &[&'static str],
) {
    use std::os::unix::ffi::OsStrExt;
    if let Some(t) = live.tracker.as_mut() {
        t.rec.init_pid = init_pid;
        t.rec.isolation = receipt::isolation(spec, Some(enforced), limits);
        let base = ExecBase {
            env: spec
                .env
                .iter()
                .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
                .collect(),
            cwd: spec.workdir.as_os_str().as_bytes().to_vec(),
        };
        match Control::bind(&t.dir, base) {
            Ok(c) => live.control = Some(c),
            Err(e) => eprintln!(
                "sandbox: warning: cannot create the control socket in {}: {}; `sandbox exec` \
                 and `stop` will not reach this sandbox",
                t.dir.path().display(),
                crate::errors::io_reason(&e)
            ),
        }
    }
    live.started();
}

/// The micro-VM backend: everything runs in this process (vCPU and device
/// threads), so its CPU time is ours.
fn run_vm(spec: &Spec, sigfd: &OwnedFd, ctx: &mut RunCtx) -> Result<Outcome, RunError> {
    let mut report = crate::vm::launch::VmReport {
        launcher_t0: ctx.t0,
        ..Default::default()
    };
    let before = self_rusage();
    // The pty is inside the guest; the caller's terminal is raw meanwhile
    // (restored when the guard drops, on every path).
    let raw = (spec.tty && tty::is_tty(0))
        .then(|| tty::RawMode::enable(0))
        .flatten();
    let result = crate::vm::launch::run(spec, sigfd, &mut report, ctx.live.as_mut());
    drop(raw);
    let after = self_rusage();
    ctx.enforced = report.enforced;
    ctx.limits_not_enforced = report.not_enforced.clone();
    ctx.guest_failed = report.guest_failed;
    ctx.vm_info = Some(json!({
        "vcpus": report.vcpus,
        "memory_mib": report.memory_mib,
        "kernel": report.kernel,
        "boot": report.boot,
        "snapshot": report.snapshot,
        "snapshot_created_ms": report.snapshot_created_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "init_ready_ms": report.boot_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "command_started_ms": report.started_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "command_exited_ms": report.exited_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "output_drained_ms": report.drained_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "vm_stopped_ms": report.stopped_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "first_kvm_run_ms": report.first_kvm_run_ms.map(|m| (m * 1000.0).round() / 1000.0),
        "machine_phases_us": report.timings.map(|t| {
            let us = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round();
            json!({
                "create_vm": us(t.create_vm),
                "memory": us(t.memory),
                "memory_register": us(t.memory_register),
                "irqchip": us(t.irqchip),
                "load_kernel": us(t.load_kernel),
                "load_phase": us(t.load_phase),
                "cpuid": us(t.cpuid),
                "serial": us(t.serial),
                "devices": us(t.devices),
                "boot_data": us(t.boot_data),
                "vcpus": us(t.vcpus),
                "first_run": t.first_run.map(us),
                "total": t.total.map(us),
            })
        }),
    }));
    ctx.cgroup_info = Some(json!({
        "cpu_time_ms": (((after.0 - before.0) * 1000.0).round() / 1000.0),
        "max_rss_kib_largest_process": after.1,
        "cgroup": Value::Null,
    }));
    let outcome = result?;
    if let Some(e) = report.start_error.take() {
        return Err(RunError::Start(e));
    }
    Ok(outcome)
}

fn self_rusage() -> (f64, i64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into `ru`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss)
}

/// Resolve `--security-label` into the context to execute the command in.
/// Returns the dynamic label's lock and the relabelled volumes, held for
/// the run (labels are restored when they are dropped).
fn security_label(
    spec: &mut Spec,
    ctx: &mut RunCtx,
) -> Result<Option<(selinux::Dynamic, Vec<selinux::Relabeled>)>, RunError> {
    if matches!(spec.security_label, LabelMode::None | LabelMode::Inherit) {
        return Ok(None);
    }
    if !selinux::enabled() {
        eprintln!(
            "sandbox: warning: SELinux is disabled on this host: the security label ({}) is not \
             enforced",
            spec.security_label.as_str()
        );
        ctx.label_not_enforced = true;
        return Ok(None);
    }
    if !selinux::enforcing() {
        eprintln!(
            "sandbox: warning: SELinux is permissive on this host: the security label ({}) is \
             applied but not enforced",
            spec.security_label.as_str()
        );
        ctx.label_not_enforced = true;
    }
    match spec.security_label.clone() {
        LabelMode::Static(c) => {
            selinux::check_context(&c)?;
            spec.exec_label = Some(c);
            Ok(None)
        }
        _ => {
            let d = selinux::allocate()?;
            selinux::check_context(&d.context)?;
            let file_ctx = selinux::volume_context(d.categories);
            selinux::check_context(&file_ctx)?;
            // Writable volumes carry the sandbox's label while it runs and
            // get their old labels back afterwards.
            let mut relabeled = Vec::new();
            for m in &spec.mounts {
                if let MountSpec::Bind {
                    src,
                    readonly: false,
                    ..
                } = m
                {
                    relabeled.push(selinux::relabel(src, &file_ctx)?);
                }
            }
            // Restored in the reverse order: a volume given twice (or one
            // inside another) ends up with its original labels.
            relabeled.reverse();
            spec.exec_label = Some(d.context.clone());
            Ok(Some((d, relabeled)))
        }
    }
}

/// Mounts the launcher made itself: (index in `Spec::mounts`, mount fd).
type Prepared = Vec<(usize, OwnedFd)>;

/// `--user dynamic`: lock a host id, and idmap the writable volumes so that
/// they stay owned by the caller. Returns the id's lock (held for the run)
/// and the prepared mounts for init.
fn dynamic_user(
    spec: &mut Spec,
    caller: &Caller,
) -> Result<(Option<dac::DynamicId>, Prepared), RunError> {
    if !spec.dynamic_user {
        return Ok((None, Vec::new()));
    }
    let d = dac::allocate(dac::configured_range()?)?;
    spec.user = User {
        uid: d.id,
        gid: d.id,
    };
    let mut prepared = Vec::new();
    let rw: Vec<(usize, &Path)> = spec
        .mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            MountSpec::Bind {
                src,
                readonly: false,
                ..
            } => Some((i, src.as_path())),
            _ => None,
        })
        .collect();
    if !rw.is_empty() {
        let userns = dac::idmap_userns(caller.uid, caller.gid, d.id)?;
        for (i, src) in rw {
            prepared.push((i, dac::idmapped_tree(src, &userns)?));
        }
    }
    Ok((Some(d), prepared))
}

/// cgroup v1 (or no limits): the cgroup is made on a helper thread while
/// the namespaces are created (both take about a millisecond here), and
/// init moves itself into it (through the `tasks` files opened here and
/// sent with the go byte) before it may run anything.
fn start_v1_overlapped(
    spec: &Spec,
    prepared: Prepared,
    cgroup: &mut Option<Cgroup>,
    degraded: &mut Option<CgroupError>,
    best_effort_ok: impl Fn(&CgroupError) -> bool,
) -> Result<Result<Running, StartError>, RunError> {
    let mut maker = (!spec.limits.is_empty()).then(|| {
        let (name, limits, best_effort) = (spec.name.clone(), spec.limits, spec.limits_best_effort);
        std::thread::spawn(move || Cgroup::create(&name, &limits, best_effort))
    });
    let mut cgroup_err: Option<CgroupError> = None;
    let started = container::start(spec, prepared, None, |pid| {
        let Some(handle) = maker.take() else {
            return Ok(Vec::new());
        };
        let made = handle.join().unwrap_or_else(|_| {
            Err(CgroupError::Io {
                path: "cgroup".into(),
                reason: "helper thread panicked".into(),
            })
        });
        match made {
            Ok(cg) => {
                // v1: the child moves itself, through the `tasks` files
                // opened here (cheaper than migrating it from outside).
                let placed = match cg.v1_task_files() {
                    Ok(Some(tasks)) => Ok(tasks),
                    Ok(None) => cg.add(pid).map(|()| Vec::new()),
                    Err(e) => Err(e),
                };
                *cgroup = Some(cg);
                placed.map_err(|e| StartError::Sys {
                    what: container::PLACE_FAILED,
                    reason: e.to_string(),
                })
            }
            Err(e) if best_effort_ok(&e) => {
                *degraded = Some(e);
                Ok(Vec::new())
            }
            Err(e) => {
                cgroup_err = Some(e);
                Err(StartError::Sys {
                    what: "cgroup",
                    reason: String::new(),
                })
            }
        }
    });
    // Start failed before placing init: wait for the helper so that the
    // cgroup it made is removed before the launcher exits.
    if let Some(handle) = maker.take() {
        drop(handle.join());
    }
    if let Some(e) = cgroup_err {
        return Err(e.into());
    }
    Ok(started)
}

/// A started sandbox and what the run could not enforce.
struct Started {
    running: Running,
    cgroup: Option<Cgroup>,
    /// Limits skipped in best-effort mode.
    not_enforced: Vec<&'static str>,
}

/// Start the sandbox; when limits are asked for, the cgroup is created on a
/// helper thread while the namespaces are being created (both take about a
/// millisecond here), and init is placed in it before it may run anything.
fn start_with_cgroup(spec: &Spec, prepared: Prepared) -> Result<Started, RunError> {
    let best_effort_ok = |e: &CgroupError| {
        spec.limits_best_effort
            && matches!(
                e,
                CgroupError::NoController { .. } | CgroupError::NotDelegated { .. }
            )
    };
    let mut cgroup: Option<Cgroup> = None;
    let mut degraded: Option<CgroupError> = None;
    let started = if !spec.limits.is_empty() && container::host_is_cgroup2() {
        // cgroup v2: make the cgroup first, then start init directly in it
        // (CLONE_INTO_CGROUP: no migration of a running task).
        match Cgroup::create(&spec.name, &spec.limits, spec.limits_best_effort) {
            Ok(cg) => cgroup = Some(cg),
            Err(e) if best_effort_ok(&e) => degraded = Some(e),
            Err(e) => return Err(e.into()),
        }
        let dir = match &cgroup {
            Some(cg) => Some(cg.v2_dir_fd().ok_or_else(|| CgroupError::Io {
                path: cg.path().map(Path::to_path_buf).unwrap_or_default(),
                reason: "cannot open the cgroup directory".into(),
            })?),
            None => None,
        };
        container::start(spec, prepared, dir.as_ref().map(AsRawFd::as_raw_fd), |_| {
            Ok(Vec::new())
        })
    } else {
        start_v1_overlapped(spec, prepared, &mut cgroup, &mut degraded, best_effort_ok)?
    };
    let running = started?;
    let mut not_enforced: Vec<&'static str> = cgroup
        .as_ref()
        .map(|c| c.not_enforced.clone())
        .unwrap_or_default();
    if let Some(e) = &degraded {
        eprintln!(
            "sandbox: warning: {e}; the limits are not enforced (the profile allows best effort)"
        );
        let l = &spec.limits;
        for (set, what) in [
            (l.memory.is_some(), "memory"),
            (l.cpus.is_some(), "cpus"),
            (l.pids.is_some(), "pids"),
            (l.io_weight.is_some(), "io_weight"),
        ] {
            if set {
                not_enforced.push(what);
            }
        }
    }
    for what in cgroup.iter().flat_map(|c| &c.not_enforced) {
        eprintln!(
            "sandbox: warning: the {what} limit is not enforced on this host (the profile \
             allows best-effort limits)"
        );
    }
    Ok(Started {
        running,
        cgroup,
        not_enforced,
    })
}

/// CPU time (user + system, ms) and the largest RSS (KiB) of all reaped
/// descendants.
fn children_rusage() -> (f64, i64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into `ru`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    (
        ((ms(ru.ru_utime) + ms(ru.ru_stime)) * 1000.0).round() / 1000.0,
        ru.ru_maxrss,
    )
}

fn warn_not_enforced(feature: &str) {
    eprintln!(
        "sandbox: warning: {feature} is not available on this host and is not enforced \
         (see `sandbox doctor`; use --{feature} require to refuse running without it)"
    );
}
