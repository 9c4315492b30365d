#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_browser.py) if it
# is missing. Idempotent and quiet: does nothing when /usr/bin/chromium exists.
# The tests drive it with the `playwright` Python package (a dev extra) through
# executable_path; playwright's own browser downloads are never used.
#
# Needs root (or password-less sudo) and apt-get. Where neither is available it
# warns and exits 0, so the browser tests skip; with PCCLOG_REQUIRE_BROWSER=1
# (CI) it exits 1 instead.
set -euo pipefail

CHROMIUM="${PCCLOG_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0

give_up() {
    echo "browser_setup.sh: $1; the browser tests will skip" >&2
    [ "${PCCLOG_REQUIRE_BROWSER:-}" = "1" ] && exit 1
    exit 0
}

command -v apt-get >/dev/null 2>&1 || give_up "no apt-get to install chromium"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    give_up "installing chromium needs root (run: sudo bash tests/browser_setup.sh)"
fi

echo "browser_setup.sh: installing chromium with apt-get (once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >/dev/null
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x "$CHROMIUM" ] || give_up "apt-get ran but $CHROMIUM is still missing"
