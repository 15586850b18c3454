//! The escape-and-fault suite: every case of `escape/cases.py` (seccomp
//! rules, capabilities, read-only host, masked paths, devices, namespaces,
//! host loopback and abstract sockets, setuid binaries, fd leaks, ...) run
//! inside a sandbox of every shipped profile, as root and rootless. Prints
//! the number of cases that held; every case must hold.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use sandbox_e2e::*;

fn cases_py() -> PathBuf {
    workspace_root().join("tests/tests/escape/cases.py")
}

fn shipped_profiles() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(workspace_root().join("profiles"))
        .expect("profiles/ exists")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

fn run_suite(who: Who) {
    // Host-side targets the sandbox must not reach.
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let port = tcp
        .local_addr()
        .expect("listener address")
        .port()
        .to_string();
    let abstract_name = format!("sandbox-e2e-escape-{}", std::process::id());
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract address");
        UnixListener::bind_addr(&addr).expect("bind an abstract socket")
    };
    let profiles = shipped_profiles();
    assert!(
        profiles.len() >= 2,
        "expected the shipped profiles, found {profiles:?}"
    );
    for profile in profiles {
        let out = Sandbox::run(who)
            .args(["-p", &profile])
            .cmd([
                PY.as_ref(),
                cases_py().as_os_str(),
                port.as_ref(),
                abstract_name.as_ref(),
            ])
            .output();
        out.assert_ok();
        let stdout = out.stdout_str();
        let cases: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CASE ")).collect();
        let escaped: Vec<&&str> = cases.iter().filter(|l| !l.ends_with(" HELD")).collect();
        eprintln!(
            "escape suite [profile {profile}, {who:?}]: {}/{} cases held",
            cases.len() - escaped.len(),
            cases.len()
        );
        assert!(
            cases.len() >= 50,
            "too few cases ran ({}):\n{stdout}",
            cases.len()
        );
        assert!(escaped.is_empty(), "profile {profile}: {escaped:#?}");
    }
    // Nothing connected to the host-side targets.
    tcp.set_nonblocking(true).expect("nonblocking");
    assert!(
        tcp.accept().is_err(),
        "a sandbox reached the host loopback listener"
    );
    abs.set_nonblocking(true).expect("nonblocking");
    if let Ok((mut c, _)) = abs.accept() {
        let mut b = Vec::new();
        let _ = c.read_to_end(&mut b);
        panic!("a sandbox reached the host abstract socket");
    }
}

both! {
    /// Every shipped profile holds against every case.
    fn every_profile_holds(who) {
        run_suite(who);
    }
}
