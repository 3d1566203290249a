"""How monollm.cluster.slurm reaches the Slurm login node over SSH: the host key checked against
known_hosts (MONOLLM_SLURM_KNOWN_HOSTS), in the cluster check and in every connection of the
metaflow-slurm extension, and values quoted for remote shell commands."""
from __future__ import annotations

import os
import re
import shlex

from metaflow.exception import MetaflowException

CONNECT_TIMEOUT_S = 20
"""How long the check waits for the login node before calling it unreachable."""
KNOWN_HOSTS_ENV = "MONOLLM_SLURM_KNOWN_HOSTS"
"""Environment variable: the known_hosts file the login node's host key must be in (unset or
empty: the user's, ~/.ssh/known_hosts); "none": any host key is accepted (no protection against
a machine posing as the login node: only on a network you trust). It alone governs the check:
~/.ssh/config's UserKnownHostsFile and StrictHostKeyChecking do not turn it off (the cluster
check says so in one line where they would), and on a port other than 22 only a `[host]:port`
entry counts, as for OpenSSH."""
OFF_IN_SSH_CONFIG = (("userknownhostsfile", "none"), ("stricthostkeychecking", "no"),
                     ("stricthostkeychecking", "off"), ("userknownhostsfile", "/dev/null"))
"""~/.ssh/config settings (lower case) that turn host-key checking off for ssh, but not here."""


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
    """asyncssh's known_hosts argument from KNOWN_HOSTS_ENV: the entries of the user's
    ~/.ssh/known_hosts (none where it is missing: every host unverified) or of the file it names,
    matched port-exactly (_PortExact), or None (no check) for "none"; a named file that is not
    there raises SlurmSetupError. Given explicitly, it leaves ~/.ssh/config no say in the check."""
    value = os.environ.get(KNOWN_HOSTS_ENV, "").strip()
    if value.lower() == "none":
        return None
    path = os.path.expanduser(value or "~/.ssh/known_hosts")
    if value and not os.path.isfile(path):
        fail(f"{KNOWN_HOSTS_ENV}={value!r}: no such file (a known_hosts file, or \"none\" to skip the host key check)")
    return _port_exact(path)


def _port_exact(path: str):
    """The known_hosts entries of `path` (none if it is missing) for asyncssh, matched as OpenSSH
    matches them: on a port other than 22 only `[host]:port` entries, never a bare `host` one
    (asyncssh alone falls back to it)."""
    import asyncssh

    class PortExact(asyncssh.SSHKnownHosts):
        def match(self, host, addr, port):
            return self._match(host, addr, port)

    text = ""
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    return PortExact(text)


def ssh_config_note(config_path: str = "~/.ssh/config") -> str | None:
    """One line when ~/.ssh/config holds a setting that turns host-key checking off for ssh
    (OFF_IN_SSH_CONFIG), saying that it does not here; None otherwise."""
    path = os.path.expanduser(config_path)
    if os.environ.get(KNOWN_HOSTS_ENV, "").strip().lower() == "none" or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            words = tuple(w.lower() for w in line.replace("=", " ").split()[:2])
            if words in OFF_IN_SSH_CONFIG:
                return (f"note: {config_path} line {n} ({line.strip()}) does not turn off the check of the Slurm "
                        f"login node's host key; {KNOWN_HOSTS_ENV}=none does")
    return None


def remote_path(path: str) -> str:
    """`path` quoted for a remote shell command (shlex.quote); a leading ~ or ~user stays that home
    folder, as the extension's unquoted commands read it (so stdout/ and stderr/ are made where
    the jobs write)."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (f"/{shlex.quote(path[2:])}" if path[2:] else "")
    home, _, rest = path.partition("/")
    if re.fullmatch(r"~[A-Za-z0-9._][A-Za-z0-9._-]*", home):  # left unquoted: the shell expands it
        return home + (f"/{shlex.quote(rest)}" if rest else "")
    return shlex.quote(path)


def login_node_run(attributes: dict, key_file: str, command: str) -> str:
    """Run `command` on the login node as the extension connects (asyncssh: the same address,
    user, key, certificate and ~/.ssh/config); its stdout. Connection failures name the setting."""
    import asyncio

    import asyncssh

    address, user = attributes["address"], attributes.get("username")
    who = f"METAFLOW_SLURM_ADDRESS={address!r} as METAFLOW_SLURM_USERNAME={user!r}"
    checked = known_hosts()
    note = ssh_config_note()
    if note:
        print(f"slurm: {note}", flush=True)

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
        named = os.environ.get(KNOWN_HOSTS_ENV, "").strip()
        where = f"{KNOWN_HOSTS_ENV}={named!r}" if named else "~/.ssh/known_hosts"
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
