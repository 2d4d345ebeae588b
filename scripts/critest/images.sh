#!/usr/bin/env bash
# Pushes stand-ins for every image critest pulls (and the pause image) into the private
# registry at ADDR. The machines this runs on reach package registries only, not
# registry.k8s.io or gcr.io, so the images are built here from busybox-static, three small C
# programs and two scripts; the CRI-O registries.conf of critest.sh redirects those two
# registries to ADDR. Specs that pin an image digest therefore fail for every handler.
# usage: images.sh ADDR SCRATCH_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
addr=${1:?registry address}
t=${2:?scratch dir}
mkdir -p "$t"

# A busybox root with the users and groups the user/group specs look up.
busybox_root() {
    local r=$1 a
    mkdir -p "$r"/{bin,etc,tmp,proc,sys,dev,root,var/run,www,home/default-user}
    cp /bin/busybox "$r/bin/busybox"
    # Hard links, as in the real image: a masked path (MaskedPaths: /bin/ls) must cover that
    # name only, not busybox behind a symlink, which would leave the container without sh.
    for a in $("$r/bin/busybox" --list); do
        [[ $a == busybox ]] || ln -f "$r/bin/busybox" "$r/bin/$a"
    done
    # Applets that the real busybox image has and Debian's busybox-static lacks.
    cp "$here/pgrep" "$here/ipcs" "$r/bin/"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'www-data:x:33:33:www-data:/var/www:/bin/false' \
        'default-user:x:1000:1000::/home/default-user:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' \
        >"$r/etc/passwd"
    printf '%s\n' 'root:x:0:' 'www-data:x:33:' 'default-user:x:1000:' \
        'group-defined-in-image:x:50000:default-user' 'nogroup:x:65534:' >"$r/etc/group"
    echo ok >"$r/www/index.html"
    chmod 1777 "$r/tmp"
}

# push ROOT REPO:TAG [--user U] [--port N] [CMD...]
push() {
    local root=$1 ref=$2
    shift 2
    rm -rf "$t/layout"
    python3 "$here/mkimage.py" "$root" "$t/layout" "$ref" "$@"
    skopeo copy -q --dest-tls-verify=false "oci:$t/layout:${ref##*:}" "docker://$addr/$ref"
}

mkdir -p "$t/bin"
for prog in web nnp pause; do
    gcc -static -O2 -o "$t/bin/$prog" "$here/$prog.c"
done

mkdir -p "$t/pause-root"
cp "$t/bin/pause" "$t/pause-root/pause"
push "$t/pause-root" pause:3.10 /pause

busybox_root "$t/bb"
push "$t/bb" e2e-test-images/busybox:1.29-2 /bin/sh
# NAME:USER, for the images whose config sets a user.
for ref in user-uid:1002 user-username:www-data user-uid-group:1003:1004 \
    user-username-group:www-data:1004 predefined-group:1000; do
    push "$t/bb" "k8s-staging-cri-tools/test-image-${ref%%:*}:latest" --user "${ref#*:}" /bin/sh
done

busybox_root "$t/nginx"
cp "$t/bin/web" "$t/nginx/bin/nginx"
push "$t/nginx" e2e-test-images/nginx:1.14-2 --port 80 /bin/nginx 80
push "$t/nginx" k8s-staging-cri-tools/hostnet-nginx-amd64:latest /bin/nginx 12003

busybox_root "$t/httpd"
push "$t/httpd" e2e-test-images/httpd:2.4.39-4 --port 80 /bin/sh -c 'echo httpd; exec httpd -f -p 80 -h /www'

busybox_root "$t/nnp"
install -m 4755 "$t/bin/nnp" "$t/nnp/nnp"
push "$t/nnp" e2e-test-images/nonewprivs:1.3 /nnp

# The image specs need images that differ (by a marker file named after each) and one image
# under three tags.
for ref in test-image-latest:latest test-image-tag:test test-image-tag:all \
    test-image-1:latest test-image-2:latest test-image-3:latest test-image-tags:1; do
    rm -rf "$t/tagged"
    busybox_root "$t/tagged"
    touch "$t/tagged/${ref%%:*}"
    push "$t/tagged" "k8s-staging-cri-tools/$ref" /bin/sh
done
for tag in 2 3; do
    skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
        "docker://$addr/k8s-staging-cri-tools/test-image-tags:1" "docker://$addr/k8s-staging-cri-tools/test-image-tags:$tag"
done
