"""How monollm.cluster.slurm reaches the Slurm login node over SSH: the host key checked against
known_hosts (MONOLLM_SLURM_KNOWN_HOSTS), in the cluster check and in every connection of the
metaflow-slurm extension, and values quoted for remote shell commands."""
from __future__ import annotations

import os
import shlex

from metaflow.exception import MetaflowException

CONNECT_TIMEOUT_S = 20
"""How long the check waits for the login node before calling it unreachable."""
KNOWN_HOSTS_ENV = "MONOLLM_SLURM_KNOWN_HOSTS"
"""Environment variable: the known_hosts file the login node's host key must be in (unset or
empty: the user's, ~/.ssh/known_hosts, as ssh reads it); "none": any host key is accepted (no
protection against a machine posing as the login node: only on a network you trust)."""


class SlurmSetupError(MetaflowException):
    """A Slurm setting that cannot work; the message names the setting (the command line prints
    it alone, without a traceback)."""
    headline = "Slurm setup"


def check_host_keys(client_class) -> None:
    """The extension's SlurmClient connects and copies its batch script with asyncssh and
    known_hosts=None; give each client an asyncssh that checks the host key instead."""
    init = client_class.__init__

    def checked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.asyncssh = _HostKeyChecked(self.asyncssh)

    client_class.__init__ = checked_init


class _HostKeyChecked:
    """The asyncssh module, but connect and scp check the host key as KNOWN_HOSTS_ENV says."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def connect(self, *args, **kwargs):
        return self._module.connect(*args, **{**kwargs, "known_hosts": known_hosts()})

    def scp(self, *args, **kwargs):
        return self._module.scp(*args, **{**kwargs, "known_hosts": known_hosts()})


def known_hosts():
    """asyncssh's known_hosts argument from KNOWN_HOSTS_ENV: () for the user's ~/.ssh/known_hosts,
    a file's path, or None (no check) for "none"; a file that is not there raises SlurmSetupError."""
    value = os.environ.get(KNOWN_HOSTS_ENV, "").strip()
    if not value:
        return ()
    if value.lower() == "none":
        return None
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        fail(f"{KNOWN_HOSTS_ENV}={value!r}: no such file (a known_hosts file, or \"none\" to skip the host key check)")
    return path


def remote_path(path: str) -> str:
    """`path` quoted for a remote shell command (shlex.quote); a leading ~ stays the remote user's
    home, as the extension's unquoted commands read it."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (f"/{shlex.quote(path[2:])}" if path[2:] else "")
    return shlex.quote(path)


def login_node_run(attributes: dict, key_file: str, command: str) -> str:
    """Run `command` on the login node as the extension connects (asyncssh: the same address,
    user, key, certificate and ~/.ssh/config); its stdout. Connection failures name the setting."""
    import asyncio

    import asyncssh

    address, user = attributes["address"], attributes.get("username")
    who = f"METAFLOW_SLURM_ADDRESS={address!r} as METAFLOW_SLURM_USERNAME={user!r}"
    checked = known_hosts()

    async def run():
        key = asyncssh.read_private_key(key_file)
        cert = attributes.get("cert_file")
        keys = [(key, asyncssh.read_certificate(os.path.expanduser(cert)))] if cert else [key]
        async with asyncssh.connect(address, username=user, client_keys=keys, known_hosts=checked,
                                    connect_timeout=CONNECT_TIMEOUT_S) as conn:
            return await conn.run(command)

    loop = asyncio.new_event_loop()  # not the extension's loop, which its `slurm step` process uses
    try:
        proc = loop.run_until_complete(run())
    except asyncssh.PermissionDenied:
        fail(f"the Slurm login node refused the key METAFLOW_SLURM_SSH_KEY_FILE={key_file!r} "
              f"({who}): add its public key to ~/.ssh/authorized_keys there")
    except asyncssh.HostKeyNotVerifiable as err:
        where = f"{KNOWN_HOSTS_ENV}={os.environ[KNOWN_HOSTS_ENV]!r}" if checked else "~/.ssh/known_hosts"
        fail(f"the Slurm login node METAFLOW_SLURM_ADDRESS={address!r} is not verified: its host key is not the one "
              f"{where} holds for it ({err}); add the cluster's published key there (ssh to it once and check the "
              f"fingerprint), or set {KNOWN_HOSTS_ENV}=none to skip the check")
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as err:
        fail(f"METAFLOW_SLURM_SSH_KEY_FILE={key_file!r} is not a usable private key: {err}")
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as err:
        fail(f"cannot reach the Slurm login node {who}: {type(err).__name__}: {err}")
    finally:
        loop.close()
    if proc.exit_status != 0:
        fail(f"checking the Slurm cluster on {address!r} failed (exit {proc.exit_status}): "
              f"{(proc.stderr or '').strip()[-500:]}")
    return proc.stdout or ""


def fail(message: str):
    raise SlurmSetupError(message) from None
