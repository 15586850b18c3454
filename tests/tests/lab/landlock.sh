#!/bin/sh
# Run INSIDE the nested lab booted WITHOUT Landlock (lsm= list without it),
# by lab_landlock.rs. $1: the sandbox launcher.
S=$1
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi; }
case "$(cat /sys/kernel/security/lsm)" in *landlock*) echo "CHECK no-landlock-in-lab FAIL landlock active"; echo DONE; exit 0 ;; esac
out=$($S run --landlock require -- echo ran 2>&1); rc=$?
case "$rc:$out" in 125:*"Landlock is not available"*) check require-fails-closed ok ;; *) check require-fails-closed "rc=$rc $out" ;; esac
case "$out" in *ran*) check require-runs-nothing "the command ran" ;; *) check require-runs-nothing ok ;; esac
out=$($S run --receipt /run/r.json -- echo ran 2>&1); rc=$?
case "$rc:$out" in 0:*"landlock is not available"*ran*) check auto-warns-and-runs ok ;; *) check auto-warns-and-runs "rc=$rc $out" ;; esac
tr -d ' \n' < /run/r.json | grep -q '"not_enforced":\["landlock"\]' && check receipt-not-enforced ok || check receipt-not-enforced "$(cat /run/r.json)"
out=$($S run --landlock off -- echo ran 2>&1); rc=$?
case "$rc:$out" in 0:ran) check off-is-quiet ok ;; *) check off-is-quiet "rc=$rc $out" ;; esac
echo DONE
