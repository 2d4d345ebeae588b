#!/bin/bash
# Builds what `make critest` runs, from the public sources: CRI-O v1.32.0 (crio, pinns) and
# cri-tools v1.32.0 (crictl, critest). Neither is a Debian package, and CI has no copy of the
# sources, which is why `make critest` is not part of `make test`.
# Pass git directories of github.com/cri-o/cri-o and github.com/kubernetes-sigs/cri-tools
# (with the v1.32.0 tags).
# usage: build-cri-tools.sh CRIO_GIT_DIR CRITOOLS_GIT_DIR OUT_DIR   (OUT_DIR: target/cri-tools)
# Needs: golang-go from bookworm-backports (Go 1.23), libseccomp-dev, libgpgme-dev,
#        libsqlite3-dev, gcc, make; conmon, runc (or crun) and skopeo to run CRI-O.
# Takes about 5 minutes on 2 cores. Nothing here reaches the network.
set -euo pipefail
crio_git=${1:?CRI-O git dir}; tools_git=${2:?cri-tools git dir}; out=${3:?output dir}
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=vendor GOTOOLCHAIN=local GOPROXY=off
go version | grep -qE 'go1\.(2[3-9]|[3-9][0-9])' || {
  echo "need Go >= 1.23: apt-get install -t bookworm-backports golang-go" >&2; exit 1; }

mkdir "$work/tools"
git --git-dir "$tools_git" archive v1.32.0 | tar -x -C "$work/tools"
(cd "$work/tools" && go build -o "$out/crictl" ./cmd/crictl && go test -c -o "$out/critest" ./cmd/critest)

mkdir "$work/crio"
# The vendored sqlite amalgamation is left out (we link the system libsqlite3).
git --git-dir "$crio_git" archive v1.32.0 -- . \
  ':(exclude)vendor/github.com/mattn/go-sqlite3/sqlite3-binding.c' | tar -x -C "$work/crio"
(cd "$work/crio" &&
  go build -tags "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper seccomp libsqlite3" \
    -o "$out/crio" ./cmd/crio &&
  make -C pinns >/dev/null && cp bin/pinns "$out/pinns")
"$out/crio" --version | head -1
echo "built: $(cd "$out" && echo *)"
