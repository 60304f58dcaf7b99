#!/bin/sh
# Install the system tools the test suite needs, once: OpenSSH's server and client (tests/bench/test_ssh.py
# starts a real sshd on loopback). Idempotent: does nothing when both are already there.
# Needs root or sudo with apt-get (Debian/Ubuntu); elsewhere, install openssh-server yourself.
set -eu
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 \
        && command -v ssh-keygen >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install openssh-server and openssh-client yourself" \
         "(the SSH tests are skipped without /usr/sbin/sshd)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-test-deps: not root and no password-less sudo; run as root: apt-get install -y openssh-server openssh-client" \
             "(the SSH tests are skipped without /usr/sbin/sshd)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
