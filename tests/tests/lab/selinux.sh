#!/bin/sh
# Run INSIDE the nested lab booted with --selinux (enforcing), by
# lab_selinux.rs. $1: the sandbox launcher.
S=$1
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi; }
[ "$(cat /sys/fs/selinux/enforce)" = 1 ] && check enforcing ok || check enforcing "not enforcing"
ctx=unconfined_u:unconfined_r:unconfined_t:s0:c5,c6
out=$($S run --security-label "static:$ctx" -- cat /proc/self/attr/current 2>&1 | tr -d '\0'); rc=$?
[ "$rc:$out" = "0:$ctx" ] && check static-label-applied ok || check static-label-applied "rc=$rc $out"
out=$($S run --security-label "static:system_u:system_r:nosuch_t:s0" -- echo ran 2>&1); rc=$?
case "$rc:$out" in 125:*"not valid in the loaded policy"*) check invalid-context-refused ok ;; *) check invalid-context-refused "rc=$rc $out" ;; esac
out=$($S run --security-label dynamic -- echo ran 2>&1); rc=$?
case "$rc:$out" in 125:*"policy module"*) check dynamic-fails-closed-without-module ok ;; *) check dynamic-fails-closed-without-module "rc=$rc $out" ;; esac
out=$($S run -- cat /proc/self/attr/current 2>&1 | tr -d '\0'); rc=$?
[ "$rc:$out" = "0:$(cat /proc/self/attr/current | tr -d '\0')" ] && check none-inherits ok || check none-inherits "rc=$rc $out"
echo DONE
