#!/usr/bin/env bash
# The headless Chromium that tests/test_explore.py drives with playwright (Debian's
# chromium-headless-shell; `playwright install` would download from a CDN, which these machines
# cannot reach). Called by the Makefile's set-up step. Every network step is bounded; where
# nothing works it says so and exits 0, and the browser tests then skip with that reason.
#
#   as root with apt-get:  apt-get install chromium-headless-shell
#   otherwise:             apt-get download the package and the libraries it needs that are
#                          missing, and dpkg -x them into .cache/browser (the tests find it there)
set -u
cache=".cache/browser"
found() { command -v chromium-headless-shell >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium-headless-shell ] ||
          [ -x "$cache/usr/lib/chromium/chromium-headless-shell" ] || command -v chromium >/dev/null 2>&1; }

if found; then
    echo "browser: a headless Chromium is installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: no apt-get here; install Chromium (RNNLAB_CHROMIUM=path) or the browser tests skip"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    echo "browser: apt-get install chromium-headless-shell (a few minutes at most)"
    # the apt lock may be held by another installer: wait for it, but not without a bound
    timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
        --no-install-recommends chromium-headless-shell >/dev/null 2>&1
else
    echo "browser: not root; unpacking chromium-headless-shell and its missing libraries into $cache"
    mkdir -p "$cache/debs"
    needed=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
             --no-enhances chromium-headless-shell 2>/dev/null | grep -E '^[a-z0-9]' | sort -u)
    missing=""
    for package in $needed; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    (cd "$cache/debs" && timeout 900 apt-get download $missing >/dev/null 2>&1)
    for deb in "$cache"/debs/*.deb; do
        [ -e "$deb" ] && dpkg -x "$deb" "$cache"
    done
fi
if found; then
    echo "browser: installed"
else
    echo "browser: could not install chromium-headless-shell; the browser tests will skip"
fi
exit 0
