#!/usr/bin/env bash
# Install nginx (Debian's package) for tests/test_deploy.py when it is missing.
# Idempotent and quiet: does nothing when nginx is already installed. Needs
# root (CI runs as root). Only the binary is wanted: the package's own
# service is not started here, and the tests run their own nginx on
# 127.0.0.1 with a config in a temporary directory.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "nginx_setup.sh: nginx is missing and apt-get is not available; install nginx" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101: the package's postinst must not start a system nginx
# on port 80 (restored afterwards when one was there).
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
    saved="$(mktemp)"
    cp -p "$policy" "$saved"
fi
restore() {
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy"
chmod 0755 "$policy"

export NEEDRESTART_SUSPEND=1
log="$(mktemp)"
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "nginx_setup.sh: installing nginx failed" >&2
    exit 1
fi
rm -f "$log"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
