//! `--network nat`, `--allow`, `--publish`, the resolver and cleanup
//! (docs/network.md). Every packet goes to a test host in a network
//! namespace this file makes (a veth pair from the host), or to loopback:
//! never to any other address.
//!
//! The test host (`TestHost`) has 10.213.N.2 and 10.213.N.3 on its end of
//! the veth pair (the host has 10.213.N.1) and 169.254.169.254 (routed to
//! the veth on the host: the "metadata server"). It runs TCP servers on
//! 8080, 8081 and 9000 (each answers `hello PORT`) and a DNS server on UDP
//! 5353 that knows `allowed.test` (10.213.N.2), `other.test` (10.213.N.3)
//! and `a.wild.test` (10.213.N.2). Making it needs root; the rootless
//! halves need root for the fixture only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_e2e::{both, euid, Sandbox, Who, PY};

/// The test host's servers (run with `ip netns exec`).
const SERVER: &str = r#"
import socket, struct, sys, threading
net = sys.argv[1]
names = {'allowed.test': net + '.2', 'other.test': net + '.3', 'a.wild.test': net + '.2'}
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b'hello %d\n' % port); c.close()
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 5353))
    while True:
        q, peer = s.recvfrom(512)
        i, labels = 12, []
        while q[i]:
            labels.append(q[i+1:i+1+q[i]].decode().lower()); i += 1 + q[i]
        qend = i + 5
        name, qtype = '.'.join(labels), struct.unpack('>H', q[i+1:i+3])[0]
        addr = names.get(name)
        if addr and qtype == 1:
            ans = b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + socket.inet_aton(addr)
            r = q[:2] + b'\x81\x80' + struct.pack('>HHHH', 1, 1, 0, 0) + q[12:qend] + ans
        elif addr:
            r = q[:2] + b'\x81\x80' + struct.pack('>HHHH', 1, 0, 0, 0) + q[12:qend]
        else:
            r = q[:2] + b'\x81\x83' + struct.pack('>HHHH', 1, 0, 0, 0) + q[12:qend]
        s.sendto(r, peer)
for p in (8080, 8081, 9000):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
threading.Thread(target=dns, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;

/// Run inside the sandbox: each argument is `LABEL=HOST:PORT`; prints
/// `LABEL: ok` or `LABEL: ERRNO-NAME` (names are resolved first).
const PROBE: &str = r#"
import errno, socket, sys
for arg in sys.argv[1:]:
    label, target = arg.split('=', 1)
    host, port = target.rsplit(':', 1)
    try:
        addr = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as e:
        print(label + ': noname'); continue
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(addr)
        data = s.recv(64).decode().strip()
        print(label + ': ' + ('ok' if data.startswith('hello') else 'garbled'))
    except OSError as e:
        print(label + ': ' + (errno.errorcode.get(e.errno, 'timeout') if e.errno else 'timeout'))
"#;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A test host in its own network namespace (see the module doc).
struct TestHost {
    ns: String,
    veth: String,
    /// `10.213.N`
    net: String,
    server: Option<Child>,
    /// Holds the subnet for this process (`subnet_lock`).
    _lock: std::fs::File,
}

/// A free `10.213.N.0/24` for this test process: the first N (from one
/// derived from the pid) whose lock file this process can lock.
fn subnet_lock(id: u32) -> Result<(u32, std::fs::File), String> {
    use std::os::fd::AsRawFd;
    for k in 0..250 {
        let n = 1 + (id + k) % 250;
        let path = format!("/var/tmp/sandbox-e2e-net-{n}.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: flock on an open file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((n, f));
        }
    }
    Err("no free test subnet in 10.213.0.0/16".into())
}

impl TestHost {
    fn new() -> Result<Self, String> {
        if euid() != 0 {
            return Err("making the test host's namespace and veth needs root".into());
        }
        for tool in ["pasta", "nft"] {
            if sandbox::net::find_program(tool).is_none() {
                return Err(format!(
                    "{tool} is not installed (scripts/test.sh installs it)"
                ));
            }
        }
        let id = std::process::id();
        let (n, lock) = subnet_lock(id)?;
        let ns = format!("sbt{id}");
        let veth = format!("sbt{id}h");
        let net = format!("10.213.{n}");
        let mut h = TestHost {
            ns: ns.clone(),
            veth: veth.clone(),
            net: net.clone(),
            server: None,
            _lock: lock,
        };
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["route", "add", "169.254.169.254/32", "dev", &veth])?;
        for a in [
            format!("{net}.2/24"),
            format!("{net}.3/24"),
            "169.254.169.254/32".into(),
        ] {
            ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"])?;
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ])?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, PY, "-c", SERVER, &net])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("test server: {e}"))?;
        let mut line = [0u8; 6];
        let ready = child
            .stdout
            .as_mut()
            .map(|o| o.read_exact(&mut line).is_ok() && &line == b"ready\n");
        h.server = Some(child);
        if ready != Some(true) {
            return Err("the test server did not start".into());
        }
        Ok(h)
    }

    fn addr(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    fn dns(&self) -> String {
        format!("{}:5353", self.addr(2))
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["route", "del", "169.254.169.254/32", "dev", &self.veth]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

fn host_or_skip() -> Option<TestHost> {
    match TestHost::new() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

/// Run PROBE in a sandbox with `args`; the `LABEL: RESULT` lines.
fn probe(
    who: Who,
    h: &TestHost,
    args: &[&str],
    targets: &[(&str, String)],
) -> std::collections::BTreeMap<String, String> {
    let mut argv = vec![PY.to_string(), "-c".into(), PROBE.into()];
    argv.extend(targets.iter().map(|(l, t)| format!("{l}={t}")));
    let out = Sandbox::run(who)
        .env("SANDBOX_DNS_UPSTREAM", h.dns())
        .args(args)
        .cmd(argv)
        .output();
    out.assert_ok();
    out.kv()
}

fn expect(got: &std::collections::BTreeMap<String, String>, want: &[(&str, &str)]) {
    eprintln!("probe: {got:?}");
    let mut bad = Vec::new();
    for (label, result) in want {
        let ok = match *result {
            "ok" => got.get(*label).map(String::as_str) == Some("ok"),
            "denied" => got.get(*label).is_some_and(|r| r != "ok"),
            other => got.get(*label).map(String::as_str) == Some(other),
        };
        if !ok {
            bad.push(format!(
                "{label}: expected {result}, got {:?}",
                got.get(*label)
            ));
        }
    }
    assert!(bad.is_empty(), "{}\nall: {got:?}", bad.join("\n"));
}

both! {
    /// The test host is reachable with `nat`, not with `none`.
    fn nat_reaches_a_test_host_none_does_not(who) {
        let Some(h) = host_or_skip() else { return };
        let t = [("srv", format!("{}:8080", h.addr(2)))];
        let got = probe(who, &h, &["--network", "nat"], &t);
        expect(&got, &[("srv", "ok")]);
        let got = probe(who, &h, &["--network", "none"], &t);
        expect(&got, &[("srv", "ENETUNREACH")]);
    }
}

both! {
    /// The allow/deny matrix for addresses, blocks, ports and port ranges.
    fn allow_matrix_addresses_and_ports(who) {
        let Some(h) = host_or_skip() else { return };
        let (a2, a3) = (h.addr(2), h.addr(3));
        let t = [
            ("a2_8080", format!("{a2}:8080")),
            ("a2_8081", format!("{a2}:8081")),
            ("a2_9000", format!("{a2}:9000")),
            ("a3_8080", format!("{a3}:8080")),
            ("a3_9000", format!("{a3}:9000")),
        ];
        // One address and port.
        let r = format!("{a2}:8080");
        let got = probe(who, &h, &["--network", "nat", "--allow", &r], &t);
        expect(&got, &[("a2_8080", "ok"), ("a2_8081", "ECONNREFUSED"), ("a2_9000", "denied"),
                       ("a3_8080", "denied"), ("a3_9000", "denied")]);
        // A whole address.
        let got = probe(who, &h, &["--network", "nat", "--allow", &a3], &t);
        expect(&got, &[("a2_8080", "denied"), ("a3_8080", "ok"), ("a3_9000", "ok")]);
        // A block with a port range over TCP.
        let r = format!("{}.0/24:8080-8081/tcp", h.net);
        let got = probe(who, &h, &["--network", "nat", "--allow", &r], &t);
        expect(&got, &[("a2_8080", "ok"), ("a2_8081", "ok"), ("a2_9000", "denied"),
                       ("a3_8080", "ok"), ("a3_9000", "denied")]);
        // A port alone, any destination; UDP only does not open TCP.
        let got = probe(who, &h, &["--network", "nat", "--allow", "9000", "--allow", "8080/udp"], &t);
        expect(&got, &[("a2_8080", "denied"), ("a2_9000", "ok"), ("a3_9000", "ok")]);
    }
}

both! {
    /// DNS names: only allowed names resolve, only their addresses (and
    /// ports) are reachable, and only once resolved.
    fn allow_matrix_dns_names(who) {
        let Some(h) = host_or_skip() else { return };
        let (a2, a3) = (h.addr(2), h.addr(3));
        let t = [
            ("before", format!("{a2}:8080")),
            ("name", "allowed.test:8080".into()),
            ("after", format!("{a2}:8080")),
            ("port", format!("{a2}:8081")),
            ("other", "other.test:8080".into()),
            ("other_addr", format!("{a3}:8080")),
            ("wild", "a.wild.test:9000".into()),
            ("unknown", "nowhere.test:8080".into()),
        ];
        let got = probe(who, &h, &["--network", "nat", "--allow", "allowed.test:8080",
                                   "--allow", "*.wild.test:9000"], &t);
        expect(&got, &[("before", "denied"), ("name", "ok"), ("after", "ok"),
                       ("port", "denied"), ("other", "noname"), ("other_addr", "denied"),
                       ("wild", "ok"), ("unknown", "noname")]);
        // Without --allow every name resolves through the launcher's resolver.
        let got = probe(who, &h, &["--network", "nat"], &t[4..5]);
        expect(&got, &[("other", "ok")]);
    }
}

both! {
    /// The host's own addresses, its loopback and the metadata address are
    /// blocked without a rule, and reachable when a rule names them.
    fn host_and_metadata_are_blocked(who) {
        let Some(h) = host_or_skip() else { return };
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
        let port = listener.local_addr().expect("addr").port();
        let accept = std::thread::spawn(move || {
            for c in listener.incoming().flatten().take(8) {
                let mut c = c;
                let _ = c.write_all(b"hello host\n");
            }
        });
        let host_addr = h.addr(1);
        let t = [
            ("host_addr", format!("{host_addr}:{port}")),
            ("loopback", format!("127.0.0.1:{port}")),
            ("metadata", "169.254.169.254:8080".into()),
        ];
        let got = probe(who, &h, &["--network", "nat"], &t);
        // 127.0.0.1 is the sandbox's own loopback: nothing listens there.
        expect(&got, &[("host_addr", "ECONNREFUSED"), ("loopback", "ECONNREFUSED"),
                       ("metadata", "ECONNREFUSED")]);
        let got = probe(who, &h, &["--network", "nat", "--allow", &host_addr,
                                   "--allow", "169.254.169.254:8080"], &t);
        expect(&got, &[("host_addr", "ok"), ("metadata", "ok")]);
        drop(accept);
    }
}

both! {
    /// `--log-denied` reports a refused connection on stderr; the receipt
    /// lists the rules in force.
    fn log_denied_and_receipt(who) {
        let Some(h) = host_or_skip() else { return };
        let dir = std::path::PathBuf::from("/var/tmp").join(sandbox_e2e::unique("net-receipt"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let receipt = dir.join("r.json");
        if !who.is_root() {
            let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        }
        let out = Sandbox::run(who)
            .env("SANDBOX_DNS_UPSTREAM", h.dns())
            .args(["--network", "nat", "--log-denied", "--allow", &format!("{}:8080", h.addr(2))])
            .args(["--receipt".as_ref(), receipt.as_os_str()])
            .env("PROBE", PROBE)
            .args(["-e", "PROBE"])
            .sh(&format!("{PY} -c \"$PROBE\" x={}:9000 n=other.test:80; sleep 0.3", h.addr(3)))
            .output();
        out.assert_ok();
        out.assert_stderr_contains(&format!("{}:9000", h.addr(3)));
        out.assert_stderr_contains("other.test");
        let text = std::fs::read_to_string(&receipt).expect("receipt");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let rules = &v["isolation"]["enforced"]["network_rules"];
        assert_eq!(rules["mode"], "nat", "{rules}");
        assert_eq!(rules["egress"], "default-deny", "{rules}");
        assert_eq!(rules["allow"][0], format!("{}:8080", h.addr(2)), "{rules}");
        let blocked = rules["blocked_unless_allowed"].as_array().expect("blocked");
        assert!(blocked.iter().any(|b| b == "169.254.0.0/16"), "{rules}");
        assert!(blocked.iter().any(|b| *b == h.addr(1)), "{rules}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

both! {
    /// A published port reaches a server in the sandbox from the host.
    fn published_port_is_reachable_from_the_host(who) {
        let Some(_h) = host_or_skip() else { return };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let server = "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 8000))\n\
                      s.listen(1)\nprint('listening', flush=True)\nc, _ = s.accept()\n\
                      c.sendall(b'from the sandbox\\n')\nc.close()\n";
        let mut sb = Sandbox::run(who)
            .args(["--network", "nat", "--publish", &format!("127.0.0.1:{port}:8000")])
            .cmd([PY, "-c", server])
            .spawn();
        sb.wait_for_line("listening", Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = String::new();
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = c.read_to_string(&mut got);
                if !got.is_empty() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(got, "from the sandbox\n");
        let out = sb.wait();
        out.assert_ok();
    }
}

both! {
    /// The command cannot change the rules, even with every capability
    /// `--cap-add` accepts.
    fn the_command_cannot_change_the_rules(who) {
        let Some(h) = host_or_skip() else { return };
        let mut args = vec!["--network".to_string(), "nat".into(), "--allow".into(),
                            format!("{}:8080", h.addr(2))];
        for c in sandbox::security::caps::EFFECTIVE {
            args.push("--cap-add".into());
            args.push(c.to_string());
        }
        let script = format!(
            "nft flush ruleset; echo flush: $?; nft delete table inet sandbox; echo delete: $?; \
             {PY} -c \"$PROBE\" x={}:9000", h.addr(2));
        let out = Sandbox::run(who)
            .env("SANDBOX_DNS_UPSTREAM", h.dns())
            .args(&args)
            .env("PROBE", PROBE)
            .args(["-e", "PROBE"])
            .sh(&script)
            .output();
        out.assert_ok();
        let kv = out.kv();
        assert_eq!(kv.get("flush").map(String::as_str), Some("1"), "{out:?}");
        assert_eq!(kv.get("delete").map(String::as_str), Some("1"), "{out:?}");
        assert_eq!(kv.get("x").map(String::as_str), Some("ECONNREFUSED"), "{out:?}");
    }
}

/// The network namespaces of all processes and open descriptors.
fn live_netns() -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = p.path();
        if let Ok(l) = std::fs::read_link(path.join("ns/net")) {
            set.insert(l.to_string_lossy().into_owned());
        }
        for fd in std::fs::read_dir(path.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                let l = l.to_string_lossy().into_owned();
                if l.starts_with("net:") {
                    set.insert(l);
                }
            }
        }
    }
    set
}

fn wait_gone(ns: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_netns().contains(ns) {
        assert!(
            Instant::now() < deadline,
            "{ns} (and its rules) still alive {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

both! {
    /// The sandbox's network namespace, and so its rules, and pasta are
    /// gone after the run, and after the launcher is SIGKILLed.
    fn nothing_is_left_after_exit_or_kill(who) {
        let Some(h) = host_or_skip() else { return };
        let out = Sandbox::run(who)
            .env("SANDBOX_DNS_UPSTREAM", h.dns())
            .args(["--network", "nat", "--allow", "10.0.0.0/8"])
            .sh("echo ns: $(readlink /proc/self/ns/net)")
            .output();
        out.assert_ok();
        let ns = out.kv().get("ns").cloned().expect("ns line");
        wait_gone(&ns, "after the run");

        let mut sb = Sandbox::run(who)
            .env("SANDBOX_DNS_UPSTREAM", h.dns())
            .args(["--network", "nat", "--allow", "10.0.0.0/8"])
            .sh("echo ns: $(readlink /proc/self/ns/net); exec sleep 60")
            .spawn();
        let line = sb.wait_for_line("ns: ", Duration::from_secs(20));
        let ns = line.trim().trim_start_matches("ns: ").to_string();
        assert!(live_netns().contains(&ns), "{ns} not seen while running");
        sb.signal(libc::SIGKILL);
        let _ = sb.kill_and_reap();
        wait_gone(&ns, "after the launcher was killed");
    }
}

/// Processes named `name` (by `comm`).
fn processes(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
        .collect()
}

both! {
    /// A network that cannot be set up (the published host port is taken)
    /// is a start error (125, one line) and leaves no pasta, keeper or file.
    fn a_failed_setup_leaves_nothing(who) {
        let Some(h) = host_or_skip() else { return };
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let before = (processes("passt.avx2"), processes("passt"), processes("sandbox-netkeep"));
        let name = format!("netfail{}", std::process::id());
        let out = Sandbox::run(who)
            .env("SANDBOX_DNS_UPSTREAM", h.dns())
            .args(["--name", &name, "--network", "nat", "--publish", &format!("127.0.0.1:{port}:80")])
            .cmd(["/bin/true"])
            .output();
        out.assert_code(125);
        out.assert_one_line_error();
        out.assert_stderr_contains("pasta");
        out.assert_stderr_contains(&port.to_string());
        let after = (processes("passt.avx2"), processes("passt"), processes("sandbox-netkeep"));
        let new: Vec<i32> = [(&before.0, &after.0), (&before.1, &after.1), (&before.2, &after.2)]
            .iter()
            .flat_map(|(b, a)| a.iter().filter(|p| !b.contains(p)).copied().collect::<Vec<_>>())
            .collect();
        assert!(new.is_empty(), "left running: {new:?}");
        let dir = std::env::temp_dir().join(format!("sandbox-net-{}", who.uid()));
        let left: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&name))
            .collect();
        assert!(left.is_empty(), "files left in {}: {left:?}", dir.display());
        drop(taken);
    }
}

both! {
    /// `network = "nat"` and `allow = [...]` in a profile, with a command-
    /// line rule added to the profile's.
    fn profile_rules_apply(who) {
        let Some(h) = host_or_skip() else { return };
        let dir = std::path::PathBuf::from("/var/tmp").join(sandbox_e2e::unique("net-profile"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let profile = dir.join("p.toml");
        std::fs::write(&profile, format!("network = \"nat\"\nallow = [\"{}:8080\"]\n", h.addr(2)))
            .expect("profile");
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let _ = std::fs::set_permissions(&profile, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        let p = profile.display().to_string();
        let t = [("p", format!("{}:8080", h.addr(2))), ("cli", format!("{}:9000", h.addr(2))),
                 ("none", format!("{}:8081", h.addr(2)))];
        let got = probe(who, &h, &["-p", &p, "--allow", &format!("{}:9000", h.addr(2))], &t);
        expect(&got, &[("p", "ok"), ("cli", "ok"), ("none", "ECONNREFUSED")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
