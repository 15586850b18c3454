/*
 * Two small jobs for bench/vm-lab.sh, in one static binary:
 *
 * As PID 1 (the /init of the QEMU microvm initramfs): mount nothing, and
 * reboot at once (reboot(RB_AUTOBOOT); with reboot=t that is a triple
 * fault, and QEMU -no-reboot exits). If the environment has
 * BENCH_SLEEP=N (an unknown key=value on the kernel command line), sleep
 * N seconds first: used to measure QEMU's memory while the guest lives.
 *
 * Otherwise, a timer:  vm-lab-helper time COMMAND [ARG]...
 * runs COMMAND (no shell), waits for it and prints, on stderr,
 *   vm-lab-time: ns=ELAPSED status=STATUS
 * with ELAPSED the CLOCK_MONOTONIC nanoseconds from just before fork to
 * just after the wait returned, STATUS the exit status (128+N on signal
 * N). Its own exit status is COMMAND's. With VM_LAB_TIMEOUT=SECONDS in
 * the environment, COMMAND is killed (SIGKILL) after that long: status 137.
 *
 * Build: gcc -O2 -static -o vm-lab-helper bench/vm-lab-helper.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noreturn)) static void as_init(void)
{
	const char *s = getenv("BENCH_SLEEP");
	if (s) {
		char *end;
		long n = strtol(s, &end, 10);
		if (*end == '\0' && n > 0 && n < 3600) {
			struct timespec ts = {.tv_sec = n, .tv_nsec = 0};
			while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
				;
		}
	}
	reboot(RB_AUTOBOOT);
	/* Only reached if reboot failed: PID 1 must not return. */
	for (;;)
		pause();
}

static volatile pid_t child;

static void on_alarm(int sig)
{
	(void)sig;
	if (child > 0)
		kill(child, SIGKILL);
}

int main(int argc, char **argv)
{
	if (getpid() == 1)
		as_init();
	if (argc < 3 || strcmp(argv[1], "time") != 0) {
		fprintf(stderr, "usage: %s time COMMAND [ARG]...\n", argv[0]);
		return 2;
	}
	long long t0 = now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		perror("vm-lab-helper: fork");
		return 126;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		fprintf(stderr, "vm-lab-helper: exec %s: %s\n", argv[2], strerror(errno));
		_exit(127);
	}
	child = pid;
	const char *to = getenv("VM_LAB_TIMEOUT");
	if (to && atoi(to) > 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_alarm;
		sigaction(SIGALRM, &sa, NULL);
		alarm((unsigned)atoi(to));
	}
	int st;
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			perror("vm-lab-helper: waitpid");
			return 126;
		}
	}
	long long t1 = now_ns();
	int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	fprintf(stderr, "vm-lab-time: ns=%lld status=%d\n", t1 - t0, status);
	return status;
}
