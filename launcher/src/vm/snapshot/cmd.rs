//! `sandbox snapshot create|list|rm` (docs/snapshots.md).

use serde_json::json;

use super::store;
use crate::cli::{RunArgs, SnapshotCommand, SnapshotCreateArgs};
use crate::errors::EXIT_SANDBOX;
use crate::vm::{kernel, launch, VmError};

/// Run one snapshot subcommand; the exit status.
pub fn run(cmd: SnapshotCommand) -> i32 {
    let r = match cmd {
        SnapshotCommand::Create(a) => create(a),
        SnapshotCommand::List { json } => list(json),
        SnapshotCommand::Rm { name } => rm(&name),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sandbox: {e}");
            EXIT_SANDBOX
        }
    }
}

fn create(a: SnapshotCreateArgs) -> Result<(), String> {
    let args = RunArgs {
        vm: true,
        kernel: a.kernel,
        memory: a.memory,
        cpus: a.cpus,
        volume: a.volume,
        command: vec!["true".into()],
        ..RunArgs::default()
    };
    let spec =
        crate::spec::resolve(&args, &crate::spec::Caller::current()).map_err(|e| e.to_string())?;
    let kvm = launch::open_kvm().map_err(|e| e.to_string())?;
    let guest_kernel = kernel::find(spec.vm_kernel.as_deref()).map_err(|e| e.to_string())?;
    let (cpus, mib) = launch::shape(&spec).map_err(|e| e.to_string())?;
    let shape = launch::vm_shape(&spec, &guest_kernel, cpus, mib);
    let name = a.name.unwrap_or_else(|| shape.key());
    store::check_name(&name).map_err(|e| e.to_string())?;
    let root = store::root().map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let dir = launch::create_snapshot(&kvm, &spec, &shape, &guest_kernel, &root, &name)
        .map_err(|e: VmError| format!("cannot create snapshot {name:?}: {e}"))?;
    println!(
        "{name}\t{}\t{} vCPU, {} MiB, {} volume(s)\t{:.0} ms",
        dir.display(),
        cpus,
        mib,
        shape.volumes,
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn list(as_json: bool) -> Result<(), String> {
    let root = store::root().map_err(|e| e.to_string())?;
    let entries = store::list(&root).map_err(|e| e.to_string())?;
    if as_json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| match &e.state {
                Ok(s) => json!({
                    "name": e.name,
                    "cpus": s.shape.cpus,
                    "memory_mib": s.shape.memory_mib,
                    "volumes": s.shape.volumes,
                    "kernel": s.shape.kernel,
                    "created_ms": s.created_ms,
                    "disk_bytes": e.disk_bytes,
                }),
                Err(err) => json!({
                    "name": e.name,
                    "error": err.to_string(),
                    "disk_bytes": e.disk_bytes,
                }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!("NAME\tCPUS\tMEMORY\tVOLUMES\tDISK\tCREATED");
    for e in &entries {
        let disk = format!("{:.1}MiB", e.disk_bytes as f64 / (1 << 20) as f64);
        match &e.state {
            Ok(s) => println!(
                "{}\t{}\t{}MiB\t{}\t{disk}\t{}",
                e.name,
                s.shape.cpus,
                s.shape.memory_mib,
                s.shape.volumes,
                age(s.created_ms)
            ),
            Err(err) => println!("{}\t-\t-\t-\t{disk}\tunusable: {err}", e.name),
        }
    }
    Ok(())
}

fn age(created_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(created_ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn rm(name: &str) -> Result<(), String> {
    let root = store::root().map_err(|e| e.to_string())?;
    store::remove(&root, name).map_err(|e| e.to_string())
}
