#!/bin/sh
# Run INSIDE the nested lab VM booted with --systemd --cgroup2 --kvm
# (systemd 252 as PID 1, real nested KVM), as root, by lab_systemd.rs.
# $1: the sandbox launcher. $2: its sandbox-init. A unit written by
# `sandbox service install --vm`: the VM is the service (no init system in
# the guest). Prints "CHECK <name> ok" or "CHECK <name> FAIL ...", then DONE.
S=$1
HERE=$(cd "$(dirname "$0")" && pwd)
export SANDBOX_INIT=$2
PY=/usr/bin/python3
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi; }
mainpid() { systemctl show -p MainPID --value "$1"; }
# Launchers of the unit still alive.
alive() { pgrep -f "run --name $1 " | wc -l; }

# A small web server in the guest: answers "hello", logs SIGHUP and SIGTERM.
mkdir -p /tmp/websrv
cp "$HERE/web.py" /tmp/websrv/web.py

# 1. install writes a unit whose ExecStart runs the VM.
unit=$($S service install vweb --vm --ready tcp:8080 -v /tmp/websrv:/srv -- $PY /srv/web.py 2>&1)
f=/etc/systemd/system/sandbox-vweb.service
if [ "$unit" = "$f" ] && grep -q '^ExecStart=.*--vm' $f && grep -q '^Type=notify' $f; then
	check vm-install-writes-unit ok
else
	check vm-install-writes-unit "$unit $(cat $f 2>&1)"
fi
out=$($S service install vnt --vm --ready notify -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"--ready notify is not supported with --vm"*) check vm-install-refuses-notify ok ;; *) check vm-install-refuses-notify "rc=$rc $out" ;; esac

# 2. start returns once the port inside the guest accepts.
t0=$(date +%s%N)
systemctl start sandbox-vweb; rc=$?
t1=$(date +%s%N)
out=$($S exec vweb -- $PY -c 'import socket; print(socket.create_connection(("127.0.0.1", 8080), 2).recv(10).decode().strip())' 2>&1)
[ $rc -eq 0 ] && [ "$out" = hello ] && check vm-start-waits-for-readiness ok || check vm-start-waits-for-readiness "rc=$rc out=$out $(journalctl -u sandbox-vweb -o cat --no-pager | tail -5)"
echo "INFO start of sandbox-vweb (a micro-VM) with readiness took $(( (t1 - t0) / 1000000 )) ms"
[ "$(systemctl is-active sandbox-vweb)" = active ] && check vm-active ok || check vm-active "$(systemctl status sandbox-vweb --no-pager 2>&1 | tail -5)"
mp=$(mainpid sandbox-vweb)
case "$(tr '\0' ' ' </proc/$mp/cmdline)" in *"run --name vweb"*"--vm"*) check vm-mainpid-is-launcher ok ;; *) check vm-mainpid-is-launcher "$(tr '\0' ' ' </proc/$mp/cmdline)" ;; esac
out=$($S ps); case "$out" in *vweb*vm*running*) check vm-ps-sees-the-service ok ;; *) check vm-ps-sees-the-service "$out" ;; esac

# 3. journald has the guest command's stdout and stderr under the unit.
sleep 0.5
j=$(journalctl -u sandbox-vweb -o cat --no-pager 2>&1)
case "$j" in *svc-listening*svc-error-stream*|*svc-error-stream*svc-listening*) check vm-journald-gets-output ok ;; *) check vm-journald-gets-output "$j" ;; esac

# 4. reload reaches the command in the guest as SIGHUP.
systemctl reload sandbox-vweb
i=0; while [ $i -lt 50 ] && ! journalctl -u sandbox-vweb -o cat --no-pager | grep -q svc-reload; do sleep 0.2; i=$((i+1)); done
case "$(journalctl -u sandbox-vweb -o cat --no-pager)" in *svc-reload*) check vm-reload-is-sighup ok ;; *) check vm-reload-is-sighup "no svc-reload" ;; esac

# 5. stop reaches it as SIGTERM; it ends cleanly; nothing is left.
systemctl stop sandbox-vweb
sleep 0.3
case "$(journalctl -u sandbox-vweb -o cat --no-pager)" in *svc-term*) check vm-stop-is-sigterm ok ;; *) check vm-stop-is-sigterm "no svc-term" ;; esac
res=$(systemctl show -p Result --value sandbox-vweb)
[ "$res" = success ] && check vm-stop-result-success ok || check vm-stop-result-success "$res"
left="$(ls /run/sandbox 2>/dev/null) $(alive vweb)"
[ "$left" = " 0" ] && check vm-stop-leaves-nothing ok || check vm-stop-leaves-nothing "$left"

# 6. restart: each time a new launcher (a new VM), never two.
$S service install vloop --vm -- sleep 100000 >/dev/null
systemctl start sandbox-vloop
prev=$(mainpid sandbox-vloop); bad=""
t0=$(date +%s%N)
i=0
while [ $i -lt 10 ]; do
	i=$((i + 1))
	systemctl restart sandbox-vloop || { bad="restart $i failed"; break; }
	now=$(mainpid sandbox-vloop)
	[ "$now" != "$prev" ] && [ "$now" != 0 ] || { bad="restart $i: MainPID $prev -> $now"; break; }
	n=$(alive vloop)
	[ "$n" = 1 ] || { bad="restart $i: $n launchers alive"; break; }
	prev=$now
done
t1=$(date +%s%N)
echo "INFO 10 restarts of a micro-VM service took $(( (t1 - t0) / 1000000 )) ms"
[ -z "$bad" ] && check vm-restart-10-times ok || check vm-restart-10-times "$bad"

# 7. kill -9 of the main process: the VM is that process, it goes with
#    it; systemd restarts the unit; nothing of the old one stays.
old=$(mainpid sandbox-vloop)
kill -9 "$old"
n=0
while [ $n -lt 150 ]; do
	now=$(mainpid sandbox-vloop)
	[ "$now" != 0 ] && [ "$now" != "$old" ] && [ "$(systemctl is-active sandbox-vloop)" = active ] && break
	sleep 0.1; n=$((n + 1))
done
[ "$now" != "$old" ] && [ "$now" != 0 ] && check vm-kill9-restarts ok || check vm-kill9-restarts "MainPID $old -> $now $(systemctl is-active sandbox-vloop)"
[ ! -e /proc/$old ] && [ "$(alive vloop)" = 1 ] && check vm-kill9-no-leak ok || check vm-kill9-no-leak "old $old, $(alive vloop) launchers"

# 8. remove: units gone, nothing left, gc finds nothing.
$S service remove vloop; $S service remove vweb
sleep 0.3
left="$(ls /etc/systemd/system/sandbox-v* 2>/dev/null) $(ls /run/sandbox 2>/dev/null) $(alive vloop)"
[ "$left" = "  0" ] && check vm-remove-leaves-nothing ok || check vm-remove-leaves-nothing "$left"
out=$($S gc); [ "$out" = "nothing to collect" ] && check vm-gc-finds-nothing ok || check vm-gc-finds-nothing "$out"
echo DONE
