#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian 12 node, and only what is missing.
# Debian packages come from bookworm (and bookworm-backports for QEMU 10 and kernel 6.12);
# virtiofsd is built with `cargo install --locked`; vhost-device-vsock from the
# patched copy in vendor/ (vendor/README.md).
set -euo pipefail

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and cargo install need it)"

BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources
apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding the bookworm-backports suite ($BACKPORTS_FILE)"
    cat >"$BACKPORTS_FILE" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
else
    say "found the bookworm-backports suite"
fi

# pkg_version NAME -> installed version or empty
pkg_version() { { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } | awk '/^ii/{print $2}'; }

# Plain packages: any version will do.
plain=(busybox-static containerd containernetworking-plugins cpio iproute2 kmod libelf-dev zlib1g-dev
       libseccomp-dev libcap-ng-dev pkg-config protobuf-compiler systemd)
missing=()
for p in "${plain[@]}"; do
    v=$(pkg_version "$p")
    if [ -n "$v" ]; then say "found $p $v"; else missing+=("$p"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Backports packages: need a minimum major version.
need_bpo() { # NAME MIN_MAJOR
    local v major
    v=$(pkg_version "$1")
    major=$(printf '%s' "$v" | sed -E 's/^[0-9]+://; s/^([0-9]+).*/\1/')
    if [ -n "$v" ] && [ "${major:-0}" -ge "$2" ]; then
        say "found $1 $v"
        return 1
    fi
    [ -n "$v" ] && say "$1 $v is older than $2, upgrading from bookworm-backports"
    return 0
}
bpo=()
need_bpo qemu-system-x86 10 && bpo+=(qemu-system-x86)
# linux-image-amd64 is a meta package; its version is the kernel's (6.12.x in backports).
need_bpo linux-image-amd64 6 && bpo+=(linux-image-amd64)
if [ "${#bpo[@]}" -gt 0 ]; then
    apt_update
    say "installing ${bpo[*]} from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports "${bpo[@]}" >/dev/null
fi

# containerd 1.7 beside the node's 1.6: `make test` runs the CRI tests against both.
# Debian 13's package would replace 1.6 if installed, so it is only downloaded from
# the trixie suite and unpacked with dpkg-deb into a tree of its own under /opt (a
# self-contained add-on tree, on no PATH and in no unit: nothing on the node starts
# it by accident; the tests name its binary). The suite is pinned at -1: apt never
# installs or upgrades anything from it, and `apt-get download containerd/trixie`
# still fetches the one file. Its only dependencies, runc and libc6 (>= 2.34), are
# Debian 12's.
CTRD17_DIR=/opt/containerd-1.7
TRIXIE_FILE=/etc/apt/sources.list.d/kata-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/kata-trixie
ctrd17_version() { "$CTRD17_DIR/usr/bin/containerd" --version 2>/dev/null | awk '{print $3}' || true; }
v=$(ctrd17_version)
case "$v" in
    1.7.*) say "found containerd $v in $CTRD17_DIR" ;;
    *)
        if ! grep -rqsE '(^|[[:space:]])trixie([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            # The pin first: a trixie suite without it would offer every package an upgrade.
            say "adding the trixie suite at pin priority -1 ($TRIXIE_FILE, $TRIXIE_PIN)"
            cat >"$TRIXIE_PIN" <<'PIN'
# Debian 13 (trixie) is here only so that `apt-get download containerd/trixie`
# works (scripts/deps.sh of containerd-shim-kata-v2): nothing is ever installed
# or upgraded from it.
Package: *
Pin: release n=trixie
Pin-Priority: -1
PIN
            cat >"$TRIXIE_FILE" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            apt_updated=0
        fi
        apt_update
        dl=$(mktemp -d)
        chown _apt "$dl" 2>/dev/null || true # apt downloads as _apt where it can
        (cd "$dl" && apt-get download -qq containerd/trixie) || die "apt-get download containerd/trixie failed"
        deb=$(ls "$dl"/containerd_*.deb)
        pv=$(dpkg-deb -f "$deb" Version)
        case "$pv" in 1.7.*) ;; *) die "trixie's containerd is $pv, not 1.7.x" ;; esac
        rm -rf "$CTRD17_DIR.new"
        dpkg-deb -x "$deb" "$CTRD17_DIR.new"
        rm -rf "$dl"
        nv=$("$CTRD17_DIR.new/usr/bin/containerd" --version 2>&1 | awk '{print $3}')
        case "$nv" in
            1.7.*) ;;
            *) rm -rf "$CTRD17_DIR.new"; die "the unpacked containerd does not report 1.7.x: $nv" ;;
        esac
        rm -rf "$CTRD17_DIR"
        mv "$CTRD17_DIR.new" "$CTRD17_DIR"
        say "unpacked containerd $pv into $CTRD17_DIR (binary reports $(ctrd17_version))"
        ;;
esac
v=$(pkg_version containerd)
case "$v" in
    1.6.*) say "the node's containerd stays $v" ;;
    *) die "the node's containerd is ${v:-not installed}, not 1.6 (apt-get install containerd/bookworm)" ;;
esac

qv=$(qemu-system-x86_64 --version | head -1)
case "$qv" in
    *"version "1[0-9].*) say "qemu: $qv" ;;
    *) die "QEMU 10 or newer is needed, got: $qv (apt-get install -t bookworm-backports qemu-system-x86)" ;;
esac
ls /lib/modules/*/vmlinuz >/dev/null 2>&1 || ls /boot/vmlinuz-* >/dev/null 2>&1 ||
    die "no kernel image installed (apt-get install -t bookworm-backports linux-image-amd64)"

# Rust-built helpers. A copy in /usr/local/bin, not a link into root's
# home (0700): with rootless = true the helper runs as an unprivileged uid
# that must be able to execute it.
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
REPO=$(cd "$(dirname "$0")/.." && pwd)
install_helper() {
    install -m 0755 "$1" "/usr/local/bin/$2"
    say "installed /usr/local/bin/$2"
}
if command -v virtiofsd >/dev/null 2>&1; then
    say "found virtiofsd $(command -v virtiofsd)"
elif [ -x "$CARGO_BIN/virtiofsd" ]; then
    say "found virtiofsd $CARGO_BIN/virtiofsd"
else
    say "building virtiofsd with cargo install --locked (a few minutes)"
    cargo install --locked --quiet virtiofsd
fi
if [ -x "$CARGO_BIN/virtiofsd" ] && { [ ! -e /usr/local/bin/virtiofsd ] || [ -L /usr/local/bin/virtiofsd ]; }; then
    rm -f /usr/local/bin/virtiofsd
    install_helper "$CARGO_BIN/virtiofsd" virtiofsd
fi
# vhost-device-vsock: the release on crates.io (0.3.0) drops a packet a
# guest spreads over several descriptors, which 6.12 guests do for every
# packet above 32 KiB; the patched copy is built whenever the installed
# one is not exactly it (its version carries the patch level).
VSOCK_SRC="$REPO/vendor/vhost-device-vsock"
vsock_want=$(sed -n 's/^version = "\(.*\)"/\1/p' "$VSOCK_SRC/Cargo.toml" | head -1)
vsock_have=$(/usr/local/bin/vhost-device-vsock --version 2>/dev/null | awk '{print $2}' || true)
if [ "$vsock_have" = "$vsock_want" ]; then
    say "found vhost-device-vsock $vsock_have /usr/local/bin/vhost-device-vsock"
else
    say "building vhost-device-vsock $vsock_want from vendor/ (installed: ${vsock_have:-none}; a few minutes)"
    cargo install --locked --quiet --force --path "$VSOCK_SRC" \
        --root "$REPO/target/vendor-install" --target-dir "$REPO/target/vendor-build"
    install_helper "$REPO/target/vendor-install/bin/vhost-device-vsock" vhost-device-vsock
fi
# `make test` runs the suite with cargo-nextest (test groups keep VM tests two
# at a time); a fresh node has cargo but not it.
if cargo nextest --version >/dev/null 2>&1; then
    say "found $(cargo nextest --version 2>/dev/null | head -1)"
else
    say "building cargo-nextest with cargo install --locked (a few minutes)"
    cargo install --locked --quiet cargo-nextest
fi
say "all dependencies present"
