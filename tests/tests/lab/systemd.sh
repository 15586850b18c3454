#!/bin/sh
# Run INSIDE the nested lab VM booted with --systemd --cgroup2 (systemd 252
# as PID 1), as root, by lab_systemd.rs. $1: the sandbox launcher. $2: its
# sandbox-init. Drives real units written by `sandbox service install`.
# Prints "CHECK <name> ok" or "CHECK <name> FAIL ...", then DONE.
S=$1
HERE=$(cd "$(dirname "$0")" && pwd)
export SANDBOX_INIT=$2
PY=/usr/bin/python3
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi; }
mainpid() { systemctl show -p MainPID --value "$1"; }
# Commands still alive, by the start of their command line.
alive() { pgrep -f "^$1" | wc -l; }

# A small web server: answers every connection with "hello", says so on
# stdout, and logs SIGHUP and SIGTERM (which ends it with status 0).
mkdir -p /tmp/websrv /tmp/ntsrv
cp "$HERE/web.py" /tmp/websrv/web.py

# 1. install writes a unit with the settings, and loads it.
unit=$($S service install web --memory 64m --ready tcp:8080 -v /tmp/websrv:/srv -- $PY /srv/web.py 2>&1)
f=/etc/systemd/system/sandbox-web.service
if [ "$unit" = "$f" ] && grep -q '^Type=notify' $f && grep -q '^Delegate=yes' $f && grep -q '^KillMode=mixed' $f; then
    check install-writes-unit ok
else
    check install-writes-unit "$unit $(cat $f 2>&1 | tr '\n' ' ')"
fi
out=$($S service list); case "$out" in web*sandbox-web.service*) check service-list ok ;; *) check service-list "$out" ;; esac
out=$($S service install bad/name -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"invalid service name 'bad/name'"*) check install-bad-name ok ;; *) check install-bad-name "rc=$rc $out" ;; esac
out=$($S service install web2 -d -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"--detach cannot be used"*) check install-refuses-detach ok ;; *) check install-refuses-detach "rc=$rc $out" ;; esac
out=$($S service install web2 --memory lots -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"lots"*) check install-validates-run-options ok ;; *) check install-validates-run-options "rc=$rc $out" ;; esac
[ ! -e /etc/systemd/system/sandbox-web2.service ] && check refused-install-writes-nothing ok || check refused-install-writes-nothing "unit written"

# 2. start returns once the port accepts (Type=notify + --ready tcp).
t0=$(date +%s%N)
systemctl start sandbox-web; rc=$?
t1=$(date +%s%N)
out=$($S exec web -- $PY -c 'import socket; print(socket.create_connection(("127.0.0.1", 8080), 2).recv(10).decode().strip())' 2>&1)
[ $rc -eq 0 ] && [ "$out" = hello ] && check start-waits-for-readiness ok || check start-waits-for-readiness "rc=$rc out=$out"
echo "INFO start of sandbox-web with readiness took $(( (t1 - t0) / 1000000 )) ms"
[ "$(systemctl is-active sandbox-web)" = active ] && check active ok || check active "$(systemctl status sandbox-web --no-pager 2>&1 | tail -5)"
out=$($S service status web 2>&1); case "$out" in *"active (running)"*) check service-status ok ;; *) check service-status "$out" ;; esac

# 3. the main process is the launcher; the sandbox's cgroup (limits) is
#    inside the unit's delegated subtree.
mp=$(mainpid sandbox-web)
case "$(cat /proc/$mp/cmdline | tr '\0' ' ')" in *"run --name web"*) check mainpid-is-launcher ok ;; *) check mainpid-is-launcher "$(cat /proc/$mp/cmdline | tr '\0' ' ')" ;; esac
ipid=$($S inspect web | sed -n 's/.*"init_pid": \([0-9]*\).*/\1/p')
cg=$(cut -d: -f3 /proc/$ipid/cgroup)
case "$cg" in /system.slice/sandbox-web.service/sandbox/web) check limits-in-unit-subtree ok ;; *) check limits-in-unit-subtree "init $ipid in $cg" ;; esac
mem=$(cat /sys/fs/cgroup$cg/memory.max 2>&1)
[ "$mem" = 67108864 ] && check memory-limit-applied ok || check memory-limit-applied "$mem"

# 4. journald has the command's stdout and stderr under the unit.
sleep 0.5
j=$(journalctl -u sandbox-web -o cat --no-pager 2>&1)
case "$j" in *svc-listening*svc-error-stream*|*svc-error-stream*svc-listening*) check journald-gets-output ok ;; *) check journald-gets-output "$j" ;; esac

# 5. reload reaches the command as SIGHUP.
systemctl reload sandbox-web
sleep 0.5
case "$(journalctl -u sandbox-web -o cat --no-pager)" in *svc-reload*) check reload-is-sighup ok ;; *) check reload-is-sighup "no svc-reload" ;; esac

# 6. stop reaches the command as SIGTERM; it ends cleanly; nothing is left.
systemctl stop sandbox-web
sleep 0.3
case "$(journalctl -u sandbox-web -o cat --no-pager)" in *svc-term*) check stop-is-sigterm ok ;; *) check stop-is-sigterm "no svc-term" ;; esac
res=$(systemctl show -p Result --value sandbox-web)
[ "$res" = success ] && check stop-result-success ok || check stop-result-success "$res"
left="$(ls /run/sandbox 2>/dev/null) $(alive "$PY /srv/web.py") $(ls -d /sys/fs/cgroup/system.slice/sandbox-web.service 2>/dev/null)"
[ "$left" = " 0 " ] && check stop-leaves-nothing ok || check stop-leaves-nothing "$left"

# 7. restart 100 times: each time a new launcher and sandbox, never two.
$S service install loop -- sleep 100000 >/dev/null
systemctl start sandbox-loop
prev=$(mainpid sandbox-loop); bad=""
t0=$(date +%s%N)
i=0
while [ $i -lt 100 ]; do
    i=$((i + 1))
    systemctl restart sandbox-loop || { bad="restart $i failed"; break; }
    now=$(mainpid sandbox-loop)
    [ "$now" != "$prev" ] && [ "$now" != 0 ] || { bad="restart $i: MainPID $prev -> $now"; break; }
    n=$(alive "sleep 100000")
    [ "$n" = 1 ] || { bad="restart $i: $n commands alive"; break; }
    prev=$now
done
t1=$(date +%s%N)
echo "INFO 100 restarts took $(( (t1 - t0) / 1000000 )) ms"
[ -z "$bad" ] && check restart-100-times ok || check restart-100-times "$bad"
n=$(ls /run/sandbox | wc -l)
[ "$n" = 1 ] && check restarts-leave-one-state-dir ok || check restarts-leave-one-state-dir "$(ls /run/sandbox)"

# 8. kill -9 of the main process: the sandbox dies with it, systemd
#    restarts the unit (Restart=on-failure), nothing of the old one stays.
old=$(mainpid sandbox-loop)
oldinit=$($S inspect loop | sed -n 's/.*"init_pid": \([0-9]*\).*/\1/p')
kill -9 "$old"
n=0
while [ $n -lt 100 ]; do
    now=$(mainpid sandbox-loop)
    [ "$now" != 0 ] && [ "$now" != "$old" ] && [ "$(systemctl is-active sandbox-loop)" = active ] && break
    sleep 0.1; n=$((n + 1))
done
[ "$now" != "$old" ] && [ "$now" != 0 ] && check kill9-restarts ok || check kill9-restarts "MainPID $old -> $now $(systemctl is-active sandbox-loop)"
[ ! -e /proc/$oldinit ] && check kill9-old-sandbox-gone ok || check kill9-old-sandbox-gone "init $oldinit alive"
n=$(alive "sleep 100000")
[ "$n" = 1 ] && check kill9-no-leak ok || check kill9-no-leak "$n commands alive"
out=$($S ps); case "$out" in *loop*running*) check ps-sees-the-service ok ;; *) check ps-sees-the-service "$out" ;; esac

# A command killed by the SIGTERM of a stop (sleep: status 143) is a clean
# stop for systemd (SuccessExitStatus=143), not a failure.
systemctl stop sandbox-loop
res=$(systemctl show -p Result --value sandbox-loop)
[ "$res" = success ] && check stop-of-sigterm-death-is-success ok || check stop-of-sigterm-death-is-success "$res"

# 9. remove stops the unit and deletes it; nothing is left.
$S service remove loop; $S service remove web
[ ! -e /etc/systemd/system/sandbox-loop.service ] && [ ! -e $f ] && check remove-deletes-units ok || check remove-deletes-units "$(ls /etc/systemd/system/sandbox-*)"
sleep 0.3
left="$(ls /run/sandbox 2>/dev/null) $(alive 'sleep 100000') $(ls -d /sys/fs/cgroup/system.slice/sandbox-*.service 2>/dev/null)"
[ "$left" = " 0 " ] && check remove-leaves-nothing ok || check remove-leaves-nothing "$left"
out=$($S gc); [ "$out" = "nothing to collect" ] && check gc-finds-nothing ok || check gc-finds-nothing "$out"

# 10. --ready notify: the program reports readiness itself.
cat > /tmp/ntsrv/notify.py <<'PYEOF'
import os, socket, time
time.sleep(1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=serving\nREADY=1", os.environ["NOTIFY_SOCKET"])
time.sleep(100000)
PYEOF
$S service install nt --ready notify -v /tmp/ntsrv:/srv -- $PY /srv/notify.py >/dev/null
t0=$(date +%s%N); systemctl start sandbox-nt; rc=$?; t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
st=$(systemctl show -p StatusText --value sandbox-nt)
[ $rc -eq 0 ] && [ $ms -ge 1000 ] && [ "$st" = serving ] && check ready-notify ok || check ready-notify "rc=$rc ${ms}ms status=$st"
$S service remove nt
echo DONE
