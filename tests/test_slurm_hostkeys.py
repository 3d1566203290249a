"""The Slurm login node's host key, checked against an SSH server in this process (asyncssh on a
loopback port, reached through a ~/.ssh/config Host alias as a cluster user reaches a login
node): no Slurm or sshd needed. The cluster check's connection, and the extension's connect and
file copy (as monollm.cluster.slurm_ssh wraps them), refuse an unknown host key even where
~/.ssh/config turns checking off for ssh; a known_hosts entry without a port does not vouch for
another port; MONOLLM_SLURM_KNOWN_HOSTS=none is the one way out."""
import asyncio
import threading
from types import SimpleNamespace

import asyncssh
import pytest

from monollm.cluster import slurm_ssh

OFF = "  UserKnownHostsFile none\n  StrictHostKeyChecking no\n"
"""What turns host-key checking off for ssh in ~/.ssh/config."""


@pytest.fixture
def login(tmp_path, monkeypatch):
    """An SSH server on 127.0.0.1 (commands answer "ran: COMMAND", files copied with scp land as
    given), HOME a temporary folder whose ~/.ssh/config names it `login` and turns checking off."""
    host_key, client_key = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())

    def answer(process):
        process.stdout.write(f"ran: {process.command}")
        process.exit(0)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
        process_factory=answer, sftp_factory=True, allow_scp=True))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host login\n  HostName 127.0.0.1\n  Port {port}\n{OFF}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(slurm_ssh.KNOWN_HOSTS_ENV, raising=False)
    key_text = host_key.export_public_key().decode().split()[:2]
    yield SimpleNamespace(port=port, key_file=str(key_file), known=home / ".ssh" / "known_hosts",
                          entry=" ".join(key_text), tmp=tmp_path)
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def check(login) -> str:
    return slurm_ssh.login_node_run({"address": "login", "username": "someone"}, login.key_file, "sinfo")


def copy(login, name: str) -> None:
    """The extension's file copy (its arguments: known_hosts=None), through slurm_ssh's wrapper."""
    local = login.tmp / "script.sh"
    local.write_text("#!/bin/sh\n")
    checked = slurm_ssh._HostKeyChecked(asyncssh)
    keys = [asyncssh.read_private_key(login.key_file)]
    asyncio.run(checked.scp(str(local), ("login", str(login.tmp / name)), username="someone", client_keys=keys,
                            known_hosts=None))


def test_ssh_config_does_not_turn_off_the_check_and_says_so(login, capsys):
    login.known.write_text("")  # the login node's key is not known
    with pytest.raises(slurm_ssh.SlurmSetupError, match="is not verified") as err:
        check(login)
    assert "\n" not in str(err.value) and "MONOLLM_SLURM_KNOWN_HOSTS=none" in str(err.value)
    note = capsys.readouterr().out
    assert "~/.ssh/config line 4 (UserKnownHostsFile none) does not turn off the check" in note, note
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        copy(login, "copied.sh")
    assert not (login.tmp / "copied.sh").exists()


def test_the_known_key_for_that_port_is_accepted_for_the_check_and_the_copy(login):
    login.known.write_text(f"[127.0.0.1]:{login.port} {login.entry}\n")
    assert check(login) == "ran: sinfo"
    copy(login, "copied.sh")
    assert (login.tmp / "copied.sh").read_text() == "#!/bin/sh\n"


def test_an_entry_without_a_port_does_not_vouch_for_another_port(login):
    login.known.write_text(f"127.0.0.1 {login.entry}\n")  # port 22's entry, as OpenSSH reads it
    with pytest.raises(slurm_ssh.SlurmSetupError, match="is not verified"):
        check(login)
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        copy(login, "copied.sh")


def test_only_the_environment_variable_turns_the_check_off(login, monkeypatch, capsys):
    monkeypatch.setenv(slurm_ssh.KNOWN_HOSTS_ENV, "none")
    assert check(login) == "ran: sinfo"
    copy(login, "copied.sh")
    assert (login.tmp / "copied.sh").exists() and "does not turn off" not in capsys.readouterr().out


@pytest.mark.parametrize("path, quoted", [
    ("~", '"$HOME"'), ("~/metaflow", '"$HOME"/metaflow'), ("~bob", "~bob"), ("~bob/metaflow", "~bob/metaflow"),
    ("~bob/a b", "~bob/'a b'"), ("/scratch/x", "/scratch/x"), ("~b;ob/x", "'~b;ob/x'")])
def test_a_home_folder_stays_the_one_the_shell_expands(path, quoted):
    assert slurm_ssh.remote_path(path) == quoted
