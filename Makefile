# The two commands of this project:
#   make install   build, install to $(PREFIX) and run a first sandbox
#   make test      the whole test suite (what .ci/run runs)

PREFIX ?= /usr/local
MUSL := x86_64-unknown-linux-musl
CARGO ?= cargo

.PHONY: all build install kernel test bench clean

all: build

# Both binaries are static musl executables: no dynamic loader on the
# start path (see docs/performance.md).
build:
	$(CARGO) build --release -p sandbox -p sandbox-init --target $(MUSL)

install: build
	install -D -m 0755 target/$(MUSL)/release/sandbox $(DESTDIR)$(PREFIX)/bin/sandbox
	install -D -m 0755 target/$(MUSL)/release/sandbox-init $(DESTDIR)$(PREFIX)/libexec/sandbox/sandbox-init
	install -D -m 0644 launcher/policy/selinux/sandbox.cil $(DESTDIR)$(PREFIX)/share/sandbox/selinux/sandbox.cil
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	$(DESTDIR)$(PREFIX)/bin/sandbox man --out-dir $(DESTDIR)$(PREFIX)/share/man/man1
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	$(DESTDIR)$(PREFIX)/bin/sandbox completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/sandbox
	@echo "installed; first run:"
	$(DESTDIR)$(PREFIX)/bin/sandbox run -- uname -a

# The micro-VM guest kernel (cached by its configuration's hash).
kernel:
	scripts/build-kernel.sh

test:
	scripts/test.sh

bench:
	bench/run.sh

clean:
	$(CARGO) clean
