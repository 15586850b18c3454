# The lab's small web server (systemd.sh, systemd-vm.sh): answers every
# connection with "hello", says so on stdout, and logs SIGHUP and SIGTERM
# (which ends it with status 0).
import signal, socket, sys
def on_hup(*_): print("svc-reload", flush=True)
def on_term(*_): print("svc-term", flush=True); sys.exit(0)
signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, on_term)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen()
print("svc-listening", flush=True)
print("svc-error-stream", file=sys.stderr, flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello\n"); c.close()
