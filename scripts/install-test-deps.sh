#!/bin/sh
# Install the system tools the test suite needs, once: OpenSSH's server and client (tests/bench/test_ssh.py
# starts a real sshd on loopback) and Chromium (tests/test_report_html.py renders the HTML report headless).
# Idempotent: installs only what is missing, does nothing when everything is there.
# Needs root or sudo with apt-get (Debian/Ubuntu); elsewhere, install openssh-server and chromium yourself
# (the tests that need them are skipped, with the reason, when they are missing).
set -eu
PKGS=""
if ! { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 \
        && command -v ssh-keygen >/dev/null 2>&1; }; then
    PKGS="openssh-server openssh-client"
fi
if ! command -v chromium >/dev/null 2>&1; then
    PKGS="$PKGS chromium"
fi
if [ -z "$PKGS" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install$PKGS yourself" \
         "(the SSH tests are skipped without /usr/sbin/sshd, the HTML report test without chromium)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-test-deps: not root and no password-less sudo; run as root: apt-get install -y$PKGS" \
             "(the SSH tests are skipped without /usr/sbin/sshd, the HTML report test without chromium)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
