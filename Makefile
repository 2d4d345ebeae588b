# containerd-shim-kata-v2: build, guest image, install, test, demo, bench.
# Run as root on a Debian 12 node; `make deps` installs what is missing.

PREFIX  ?= /usr
DESTDIR ?=
BINDIR      := $(PREFIX)/bin
LIBEXECDIR  := $(PREFIX)/libexec/kata-containers
DEFAULTSDIR := $(PREFIX)/share/defaults/kata-containers
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SHAREDIR    := $(PREFIX)/share/kata-containers
IMAGE_DIR   ?= /var/cache/kata-containers/osbuilder-images

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:/usr/local/bin:$(PATH)
PROFILE := release
TARGET  := target/$(PROFILE)
PHASE   := scripts/phase.sh

# Everything `make install` puts on the node, relative to DESTDIR: the one
# list that install checks, prints and uninstall removes (README, "Make
# targets"; tests/install_tree.rs holds the tree to it). The node wiring
# (CRI-O drop-in, containerd snippet, RuntimeClass) goes under $(SHAREDIR)
# for the operator to copy: install never writes into /etc, so it never
# changes a running CRI-O or containerd.
INSTALLED_FILES := \
	$(BINDIR)/containerd-shim-kata-v2 \
	$(BINDIR)/kata-ctl \
	$(BINDIR)/kata-guest-image \
	$(LIBEXECDIR)/kata-agent \
	$(DEFAULTSDIR)/configuration.toml \
	$(UNITDIR)/kata-guest-image.service \
	$(SHAREDIR)/crio/50-kata \
	$(SHAREDIR)/containerd/kata.toml \
	$(SHAREDIR)/containerd/kata-v3.toml \
	$(SHAREDIR)/runtimeclass.yaml

# Directories of ours that uninstall removes when nothing else is left in
# them (innermost first).
INSTALLED_DIRS := $(SHAREDIR)/crio $(SHAREDIR)/containerd $(SHAREDIR) $(DEFAULTSDIR) $(LIBEXECDIR)

.PHONY: all deps build image install install-files uninstall test test-unit test-vm leak-check demo critest bench bench-smoke soak lint clean

all: build

deps:
	@$(PHASE) deps scripts/deps.sh

build:
	@$(PHASE) build $(CARGO) build --release --locked --workspace --all-targets

# The node's guest image, where the installed configuration expects it.
image: build
	@$(PHASE) image $(TARGET)/kata-guest-image --agent $(TARGET)/kata-agent --output-dir $(IMAGE_DIR)

install: build
	@$(MAKE) --no-print-directory install-files

# install without the build: the files of an existing release build.
install-files:
	install -D -m 0755 $(TARGET)/containerd-shim-kata-v2 $(DESTDIR)$(BINDIR)/containerd-shim-kata-v2
	install -D -m 0755 $(TARGET)/kata-ctl $(DESTDIR)$(BINDIR)/kata-ctl
	install -D -m 0755 $(TARGET)/kata-guest-image $(DESTDIR)$(BINDIR)/kata-guest-image
	install -D -m 0755 $(TARGET)/kata-agent $(DESTDIR)$(LIBEXECDIR)/kata-agent
	install -D -m 0644 configs/configuration.toml $(DESTDIR)$(DEFAULTSDIR)/configuration.toml
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/bin/kata-guest-image|$(BINDIR)/kata-guest-image --agent $(LIBEXECDIR)/kata-agent|' \
		configs/kata-guest-image.service > $(DESTDIR)$(UNITDIR)/kata-guest-image.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/kata-guest-image.service
	install -d $(DESTDIR)$(SHAREDIR)/crio $(DESTDIR)$(SHAREDIR)/containerd
	sed -e 's|/usr/bin/containerd-shim-kata-v2|$(BINDIR)/containerd-shim-kata-v2|' \
		configs/crio/50-kata > $(DESTDIR)$(SHAREDIR)/crio/50-kata
	sed -e 's|/usr/bin/containerd-shim-kata-v2|$(BINDIR)/containerd-shim-kata-v2|' \
		configs/containerd/kata.toml > $(DESTDIR)$(SHAREDIR)/containerd/kata.toml
	sed -e 's|/usr/bin/containerd-shim-kata-v2|$(BINDIR)/containerd-shim-kata-v2|' \
		configs/containerd/kata-v3.toml > $(DESTDIR)$(SHAREDIR)/containerd/kata-v3.toml
	chmod 0644 $(DESTDIR)$(SHAREDIR)/crio/50-kata $(DESTDIR)$(SHAREDIR)/containerd/kata.toml \
		$(DESTDIR)$(SHAREDIR)/containerd/kata-v3.toml
	install -D -m 0644 configs/runtimeclass.yaml $(DESTDIR)$(SHAREDIR)/runtimeclass.yaml
	@for f in $(INSTALLED_FILES); do \
		[ -f "$(DESTDIR)$$f" ] || { echo "install: $(DESTDIR)$$f was not installed" >&2; exit 1; }; done
	@echo "installed:"; for f in $(INSTALLED_FILES); do echo "  $(DESTDIR)$$f"; done

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	@for d in $(INSTALLED_DIRS); do \
		if [ -d "$(DESTDIR)$$d" ]; then rmdir --ignore-fail-on-non-empty "$(DESTDIR)$$d"; fi; done

# Every test: unit, integration, root and VM tests (QEMU under TCG here).
# VM tests are limited to two at a time by the nextest group in
# .config/nextest.toml; a global leak check closes the suite.
test: deps build
	@$(PHASE) lint $(MAKE) --no-print-directory lint
	@$(PHASE) hostile-agent $(CARGO) build --release --locked -p kata-agent --features hostile --target-dir target/hostile
	@$(PHASE) image $(TARGET)/kata-guest-image --agent $(TARGET)/kata-agent --output-dir $(CURDIR)/target/test-images
	@rm -f target/tmp/hostile-figures.txt
	@$(PHASE) tests $(CARGO) nextest run --release --locked --workspace --no-fail-fast
	@echo "== hostile-guest figures"; cat target/tmp/hostile-figures.txt 2>/dev/null || echo "(none recorded)"
	@$(PHASE) leak-check scripts/leak-check.sh

# The walk-through: a runc pod and a kata pod side by side through CRI, on
# the installed shim, configuration and node-built guest image.
demo: deps build install
	@$(PHASE) image $(DESTDIR)$(BINDIR)/kata-guest-image --agent $(DESTDIR)$(LIBEXECDIR)/kata-agent --output-dir $(IMAGE_DIR)
	@$(CARGO) bench --locked --bench demo

# critest (cri-tools v1.32) against a private CRI-O v1.32, with runc and then with the
# installed shim as handler `kata` (configs/crio/50-kata), compared spec by spec in CRITEST.md.
# Not part of `test`: it needs CRI-O and cri-tools built from their sources, which CI has no
# copy of (scripts/critest/build-cri-tools.sh). CRITEST_FOCUS=REGEX reruns a subset,
# CRITEST_HANDLERS=runc skips kata; see scripts/critest.sh.
critest:
	scripts/critest.sh

# The soak (tests/soak.rs): SOAK_CYCLES pod lifetimes (default 1,000, about 45 min
# here) through containerd's CRI, runc and kata mixed, with the host measured every
# 50 cycles; then every cell of the fault matrix (tests/fault_matrix.rs: the VM's
# components and the guest kernel's panic at every phase, about 30 min) and
# containerd's own faults at every phase (tests/cri_restart.rs, about 8 min).
# Their tables replace the matching sections of RELIABILITY.md, pass or fail.
# `make test` runs 50 cycles and one fault cell per component.
SOAK_CYCLES ?= 1000
soak: deps build
	@rm -f target/soak.md target/fault-matrix.md target/guest-panic.md target/cri-faults.md
	@SOAK_CYCLES=$(SOAK_CYCLES) SOAK_REPORT=$(CURDIR)/target/soak.md $(PHASE) soak \
		$(CARGO) nextest run --release --locked --workspace --profile soak -E 'binary(soak)' --no-capture; \
		rc=$$?; scripts/soak-report.sh target/soak.md RELIABILITY.md soak || rc=1; \
	FAULT_CELLS=all FAULT_REPORT=$(CURDIR)/target/fault-matrix.md \
		FAULT_PANIC_REPORT=$(CURDIR)/target/guest-panic.md \
		FAULT_CRI_REPORT=$(CURDIR)/target/cri-faults.md $(PHASE) fault-matrix \
		$(CARGO) nextest run --release --locked --workspace --profile soak \
		-E 'binary(fault_matrix) | binary(cri_restart)' --no-capture || rc=1; \
		scripts/soak-report.sh target/fault-matrix.md RELIABILITY.md faults || rc=1; \
		scripts/soak-report.sh target/guest-panic.md RELIABILITY.md panics || rc=1; \
		scripts/soak-report.sh target/cri-faults.md RELIABILITY.md cri-faults || rc=1; exit $$rc

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
