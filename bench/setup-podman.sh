#!/bin/sh
# Installs podman from Debian's own packages, for the podman half of airlock-bench.
#
# Debian 12 ships podman 4.3 with crun 1.8.1 as its default OCI runtime. The benchmark
# configures podman per invocation (flags and environment, see bench/src/podman.rs and
# docs/BENCHMARKS.md); this script changes no podman configuration files.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-podman.sh: run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends podman crun runc conmon catatonit

podman --version
crun --version | head -n 1
runc --version | head -n 1
