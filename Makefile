# containerd-shim-kata-v2: build, guest image, install, test, demo, bench.
# Run as root on a Debian 12 node; `make deps` installs what is missing.

PREFIX  ?= /usr
DESTDIR ?=
BINDIR      := $(PREFIX)/bin
LIBEXECDIR  := $(PREFIX)/libexec/kata-containers
DEFAULTSDIR := $(PREFIX)/share/defaults/kata-containers
UNITDIR     ?= $(PREFIX)/lib/systemd/system
IMAGE_DIR   ?= /var/cache/kata-containers/osbuilder-images

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:/usr/local/bin:$(PATH)
PROFILE := release
TARGET  := target/$(PROFILE)
PHASE   := scripts/phase.sh

# Everything `make install` puts on the node, relative to DESTDIR.
INSTALLED_FILES := \
	$(BINDIR)/containerd-shim-kata-v2 \
	$(BINDIR)/kata-ctl \
	$(BINDIR)/kata-guest-image \
	$(LIBEXECDIR)/kata-agent \
	$(DEFAULTSDIR)/configuration.toml \
	$(UNITDIR)/kata-guest-image.service

.PHONY: all deps build image install uninstall test test-unit test-vm leak-check demo bench bench-smoke lint clean

all: build

deps:
	@$(PHASE) deps scripts/deps.sh

build:
	@$(PHASE) build $(CARGO) build --release --locked --workspace --all-targets

# The node's guest image, where the installed configuration expects it.
image: build
	@$(PHASE) image $(TARGET)/kata-guest-image --agent $(TARGET)/kata-agent --output-dir $(IMAGE_DIR)

install: build
	install -D -m 0755 $(TARGET)/containerd-shim-kata-v2 $(DESTDIR)$(BINDIR)/containerd-shim-kata-v2
	install -D -m 0755 $(TARGET)/kata-ctl $(DESTDIR)$(BINDIR)/kata-ctl
	install -D -m 0755 $(TARGET)/kata-guest-image $(DESTDIR)$(BINDIR)/kata-guest-image
	install -D -m 0755 $(TARGET)/kata-agent $(DESTDIR)$(LIBEXECDIR)/kata-agent
	install -D -m 0644 configs/configuration.toml $(DESTDIR)$(DEFAULTSDIR)/configuration.toml
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/bin/kata-guest-image|$(BINDIR)/kata-guest-image --agent $(LIBEXECDIR)/kata-agent|' \
		configs/kata-guest-image.service > $(DESTDIR)$(UNITDIR)/kata-guest-image.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/kata-guest-image.service
	@echo "installed:"; for f in $(INSTALLED_FILES); do echo "  $(DESTDIR)$$f"; done

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))

# Every test: unit, integration, root and VM tests (QEMU under TCG here).
# VM tests are limited to two at a time by the nextest group in
# .config/nextest.toml; a global leak check closes the suite.
test: deps build
	@$(PHASE) lint $(MAKE) --no-print-directory lint
	@$(PHASE) image $(TARGET)/kata-guest-image --agent $(TARGET)/kata-agent --output-dir $(CURDIR)/target/test-images
	@$(PHASE) tests $(CARGO) nextest run --release --locked --workspace --no-fail-fast
	@$(PHASE) leak-check scripts/leak-check.sh

# The walk-through: a runc pod and a kata pod side by side through CRI, on
# the installed shim, configuration and node-built guest image.
demo: deps build install
	@$(PHASE) image $(DESTDIR)$(BINDIR)/kata-guest-image --agent $(DESTDIR)$(LIBEXECDIR)/kata-agent --output-dir $(IMAGE_DIR)
	@$(CARGO) bench --locked --bench demo

bench: deps build
	@$(PHASE) bench $(CARGO) bench --locked --bench boot

# One iteration of every benchmark, as CI's smoke test.
bench-smoke: build
	@BENCH_ITERATIONS=1 BENCH_OUTPUT=$(CURDIR)/target/BENCHMARKS.smoke.md $(PHASE) bench-smoke $(CARGO) bench --locked --bench boot

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
