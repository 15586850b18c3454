#![allow(clippy::unwrap_used)] // a build script reports errors by panicking
//! Compiles `policy/seccomp.toml` into classic BPF programs at build time.
//!
//! The generated file refers to syscall and ioctl numbers *symbolically*
//! (`libc::SYS_keyctl`), so the numbers are resolved for the target being
//! built, and a name that does not exist there fails the build. Jump
//! offsets only depend on the program's shape and are computed here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    #[serde(default)]
    rule: Vec<Rule>,
    #[serde(default)]
    ioctl: Vec<Rule>,
    #[serde(default)]
    flag: Vec<Flag>,
    #[serde(default)]
    enosys: Vec<Enosys>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    level: String,
    why: String,
    deny: Vec<String>,
    errno: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flag {
    level: String,
    why: String,
    syscalls: Vec<String>,
    arg: u32,
    deny_if_set: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enosys {
    level: String,
    why: String,
    syscalls: Vec<String>,
}

/// One BPF instruction with a symbolic `k`.
struct Insn {
    code: &'static str,
    jt: u8,
    jf: u8,
    k: String,
}

fn insn(code: &'static str, jt: u8, jf: u8, k: impl Into<String>) -> Insn {
    Insn {
        code,
        jt,
        jf,
        k: k.into(),
    }
}

const LD_ABS: &str = "BPF_LD | BPF_W | BPF_ABS";
const JEQ: &str = "BPF_JMP | BPF_JEQ | BPF_K";
const JGE: &str = "BPF_JMP | BPF_JGE | BPF_K";
const JSET: &str = "BPF_JMP | BPF_JSET | BPF_K";
const RET: &str = "BPF_RET | BPF_K";

fn applies(rule_level: &str, level: &str) -> bool {
    match rule_level {
        "default" => true,
        "strict" => level == "strict",
        other => panic!("seccomp policy: unknown level '{other}' (expected default or strict)"),
    }
}

fn ret_errno(errno: &str) -> Insn {
    insn(
        RET,
        0,
        0,
        format!("SECCOMP_RET_ERRNO | (libc::{errno} as u32 & SECCOMP_RET_DATA)"),
    )
}

/// One denied call, as Rust source for a `Denied` value: name, kind,
/// errno, syscall number, and which argument carries `value` (the ioctl
/// request or the refused flags).
fn entry(name: &str, kind: &str, errno: &str, nr: &str, arg: u32, value: &str) -> String {
    format!(
        "Denied {{ name: {name:?}, kind: {kind:?}, errno: libc::{errno}, nr: {nr} as i64, \
         arg: {arg}, value: ({value}) as i64 }}"
    )
}

fn compile(p: &Policy, level: &str) -> (Vec<Insn>, Vec<String>) {
    let mut prog = vec![
        insn(LD_ABS, 0, 0, "OFFSET_ARCH"),
        insn(JEQ, 1, 0, "AUDIT_ARCH_NATIVE"),
        ret_errno("ENOSYS"),
        insn(LD_ABS, 0, 0, "OFFSET_NR"),
        insn(JGE, 0, 1, "X32_SYSCALL_BIT"),
        ret_errno("ENOSYS"),
    ];
    // Everything denied, for tests and docs.
    let mut denied = Vec::new();
    for r in p.rule.iter().filter(|r| applies(&r.level, level)) {
        assert!(
            !r.why.trim().is_empty(),
            "seccomp policy: every rule needs a 'why'"
        );
        let errno = r.errno.clone().unwrap_or_else(|| "EPERM".into());
        for name in &r.deny {
            prog.push(insn(JEQ, 0, 1, format!("libc::SYS_{name} as u32")));
            prog.push(ret_errno(&errno));
            denied.push(entry(
                name,
                "syscall",
                &errno,
                &format!("libc::SYS_{name}"),
                0,
                "0",
            ));
        }
    }
    for r in p.enosys.iter().filter(|r| applies(&r.level, level)) {
        assert!(
            !r.why.trim().is_empty(),
            "seccomp policy: every rule needs a 'why'"
        );
        for name in &r.syscalls {
            prog.push(insn(JEQ, 0, 1, format!("libc::SYS_{name} as u32")));
            prog.push(ret_errno("ENOSYS"));
            denied.push(entry(
                name,
                "syscall",
                "ENOSYS",
                &format!("libc::SYS_{name}"),
                0,
                "0",
            ));
        }
    }
    // ioctl requests, matched on the low 32 bits of argument 1.
    let ioctls: Vec<&String> = p
        .ioctl
        .iter()
        .filter(|r| applies(&r.level, level))
        .flat_map(|r| &r.deny)
        .collect();
    if !ioctls.is_empty() {
        let block = 1 + 2 * ioctls.len() + 1;
        prog.push(insn(JEQ, 0, block as u8, "libc::SYS_ioctl as u32"));
        prog.push(insn(LD_ABS, 0, 0, "OFFSET_ARGS + 8"));
        for req in ioctls {
            prog.push(insn(JEQ, 0, 1, format!("libc::{req} as u32")));
            prog.push(ret_errno("EPERM"));
            denied.push(entry(
                req,
                "ioctl",
                "EPERM",
                "libc::SYS_ioctl",
                1,
                &format!("libc::{req}"),
            ));
        }
        prog.push(insn(RET, 0, 0, "SECCOMP_RET_ALLOW"));
    }
    // Flag checks: one block per syscall.
    let mut flag_blocks: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    for f in p.flag.iter().filter(|f| applies(&f.level, level)) {
        assert!(
            !f.why.trim().is_empty(),
            "seccomp policy: every rule needs a 'why'"
        );
        assert!(f.arg < 6, "seccomp policy: arg must be 0..=5");
        for s in &f.syscalls {
            let e = flag_blocks.entry(s.clone()).or_insert((f.arg, Vec::new()));
            assert_eq!(e.0, f.arg, "seccomp policy: one argument per syscall");
            e.1.extend(f.deny_if_set.iter().cloned());
        }
    }
    for (name, (arg, flags)) in flag_blocks {
        let mask = flags
            .iter()
            .map(|f| format!("libc::{f} as u32"))
            .collect::<Vec<_>>()
            .join(" | ");
        prog.push(insn(JEQ, 0, 4, format!("libc::SYS_{name} as u32")));
        prog.push(insn(LD_ABS, 0, 0, format!("OFFSET_ARGS + {}", 8 * arg)));
        prog.push(insn(JSET, 0, 1, mask));
        prog.push(ret_errno("EPERM"));
        prog.push(insn(RET, 0, 0, "SECCOMP_RET_ALLOW"));
        let label = format!("{name}({})", flags.join("|"));
        let value = flags
            .iter()
            .map(|f| format!("libc::{f}"))
            .collect::<Vec<_>>()
            .join(" | ");
        denied.push(entry(
            &label,
            "flag",
            "EPERM",
            &format!("libc::SYS_{name}"),
            arg,
            &value,
        ));
    }
    prog.push(insn(RET, 0, 0, "SECCOMP_RET_ALLOW"));
    assert!(prog.len() < 4096, "seccomp program too long");
    (prog, denied)
}

fn main() {
    let path = "policy/seccomp.toml";
    println!("cargo:rerun-if-changed={path}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(path).expect("read policy/seccomp.toml");
    let policy: Policy = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = String::from("// Generated by launcher/build.rs from policy/seccomp.toml.\n");
    for (level, konst) in [("default", "DEFAULT"), ("strict", "STRICT")] {
        let (prog, denied) = compile(&policy, level);
        writeln!(out, "pub const {konst}: &[SockFilter] = &[").unwrap();
        for i in &prog {
            writeln!(
                out,
                "    SockFilter {{ code: ({}) as u16, jt: {}, jf: {}, k: {} }},",
                i.code, i.jt, i.jf, i.k
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
        writeln!(out, "pub const {konst}_DENIED: &[Denied] = &[").unwrap();
        for d in denied {
            writeln!(out, "    {d},").unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("seccomp_policy.rs");
    std::fs::write(dest, out).unwrap();
}
