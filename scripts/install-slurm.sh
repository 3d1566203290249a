#!/usr/bin/env bash
# What tests/test_slurm.py needs on a Debian machine, as root: Slurm (slurmctld, slurmd and the
# client commands), munge and an SSH server. The test starts and stops them itself, from a
# temporary folder; nothing is enabled or started here. Debian 12 ships Slurm 22.05.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-slurm.sh: run as root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge openssh-server openssh-client
