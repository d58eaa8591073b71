#!/usr/bin/env bash
# Installs the server binaries the test suite and benchmarks start as throwaway
# processes (PostgreSQL, Redis, nginx and HAProxy as the cluster tests' balancers),
# the Go toolchain + libraries for the yamux interop peer, wrk for the benchmarks,
# Chromium for the console's browser tests and OpenSSH (server and client) for the
# `visiona forward` tests, from Debian's packages, only when
# they are missing. (Where services may start, Debian's nginx and haproxy packages
# start system services on port 80; the tests never use them, they run their own.)
set -euo pipefail

need=()
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)  # the cluster's balancer in tests
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || need+=(haproxy)  # the documented alternative, tested too
command -v wrk >/dev/null || need+=(wrk)  # the benchmarks' HTTP load generator
command -v go >/dev/null || need+=(golang-go)
command -v chromium >/dev/null || need+=(chromium)  # the console's browser tests (Playwright)
command -v jq >/dev/null || need+=(jq)  # the README walkthrough test pastes its curl | jq lines
command -v curl >/dev/null || need+=(curl)
command -v strace >/dev/null || need+=(strace)  # the syscall-count benchmark
[ -x /usr/sbin/sshd ] || need+=(openssh-server)  # `visiona forward` tests: a real sshd behind the agent
command -v ssh >/dev/null && command -v scp >/dev/null || need+=(openssh-client)  # ... and the real ssh/scp
[ -d /usr/share/gocode/src/github.com/hashicorp/yamux ] || need+=(golang-github-hashicorp-yamux-dev)
[ -d /usr/share/gocode/src/github.com/gorilla/websocket ] || need+=(golang-github-gorilla-websocket-dev)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "system-deps: installing ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
