"""A real single-node Slurm cluster on localhost for the tests: munged, slurmctld and one slurmd
(CPU only, no gres), and an sshd on a loopback port as its login node, all started from a
temporary folder and stopped at the end. Needs root (slurmd launches jobs as their user) and the
Debian packages that scripts/install-slurm.sh installs.

The login node is reached the way a user reaches a cluster: METAFLOW_SLURM_ADDRESS names a Host
of the client's ~/.ssh/config (the test's HOME is a temporary folder), which gives the port, and
the client's ~/.ssh/known_hosts holds the login node's host key.
The login environment (sshd's SetEnv) holds what a cluster account's ~/.bashrc would: where
slurm.conf is, the S3 credentials, and METAFLOW_SKIP_INSTALL_DEPENDENCIES; sbatch passes it on to
the job.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "sshd", "ssh-keygen")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
PARTITION = "cpu"
HOST_ALIAS = "slurm-login"


def missing_binaries() -> list[str]:
    """The programs the cluster needs that are not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def which(name: str) -> str:
    """The path of a program, also where sbin is not on PATH."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceError(RuntimeError):
    """A service of the test cluster did not start; the message carries its log's tail."""


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as err:
        return f"(no log: {err})"


@dataclass
class Cluster:
    """A running cluster: its folder, the client's HOME, the key and where jobs are written."""
    root: str
    home: str
    key: str
    workdir: str
    slurm_conf: str
    jobcomp: str
    procs: dict
    host_key_line: str = ""  # the login node's line in the client's ~/.ssh/known_hosts

    def env(self) -> dict:
        """What the client (the flow's `run`) needs to submit here through metaflow-slurm."""
        return {"HOME": self.home, "METAFLOW_SLURM_ADDRESS": HOST_ALIAS, "METAFLOW_SLURM_USERNAME": "root",
                "METAFLOW_SLURM_SSH_KEY_FILE": self.key, "METAFLOW_SLURM_REMOTE_WORKDIR": self.workdir}

    def run(self, *cmd: str, timeout: int = 30) -> subprocess.CompletedProcess:
        """A Slurm client command on this cluster (as on its login node)."""
        return subprocess.run([which(cmd[0]), *cmd[1:]], env={**os.environ, "SLURM_CONF": self.slurm_conf},
                              capture_output=True, text=True, timeout=timeout)

    def stop(self):
        """Cancel what is still queued or running (slurmstepd outlives slurmd), then stop the services."""
        ctl = self.procs.get("slurmctld")
        if ctl is not None and ctl.poll() is None:
            self.run("scancel", "--full", "--user=root")
            end = time.monotonic() + 20
            while self.run("squeue", "--noheader").stdout.strip() and time.monotonic() < end:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "sshd", "munged"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _write(path: str, text: str, mode: int = 0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _start(procs: dict, name: str, cmd: list[str], log: str, env: dict | None = None):
    procs[name] = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)


def _wait(what: str, ready, procs: dict, name: str, log: str, timeout: float = 60):
    """Poll `ready()` until true; a dead process or the timeout raises ServiceError with the log."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return
        proc = procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{name} exited with status {proc.returncode} before {what}; log tail:\n{tail(log)}")
        time.sleep(0.2)
    raise ServiceError(f"{name}: no {what} after {timeout:.0f} s; log tail:\n{tail(log)}")


def start(root: str, login_env: dict) -> Cluster:
    """Start munged, slurmctld, slurmd and sshd under `root`; `login_env` is added to the login
    node's environment (and so to every job's). The node offers the machine's CPUs and 80% of
    its memory (slurmd drains a node that has less than slurm.conf says). Raises ServiceError
    naming the service and its log."""
    if os.geteuid() != 0:
        raise ServiceError("the Slurm test cluster needs root (slurmd starts jobs as their user)")
    missing = missing_binaries()
    if missing:
        raise ServiceError(f"not installed: {', '.join(missing)} (scripts/install-slurm.sh installs them)")
    cpus = os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20 * 0.8)
    host = socket.gethostname().split(".")[0]
    paths = {k: os.path.join(root, k) for k in ("munge", "state", "spool", "logs", "home", "work", "ssh")}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    os.chmod(paths["munge"], 0o700)
    procs: dict = {}
    cluster = None
    try:
        # munge: its own key and socket, so the machine's munge (if any) is left alone
        key = os.path.join(paths["munge"], "munge.key")
        _write(key, os.urandom(128).hex(), 0o600)
        sock, mlog = os.path.join(paths["munge"], "munge.socket"), os.path.join(paths["logs"], "munged.log")
        _start(procs, "munged", [which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                                 f"--log-file={mlog}", f"--pid-file={paths['munge']}/munged.pid",
                                 f"--seed-file={paths['munge']}/munged.seed"], mlog)
        _wait("socket", lambda: os.path.exists(sock), procs, "munged", mlog)

        conf = os.path.join(root, "slurm.conf")
        jobcomp = os.path.join(paths["logs"], "jobcomp.txt")
        ctl_log, d_log = os.path.join(paths["logs"], "slurmctld.log"), os.path.join(paths["logs"], "slurmd.log")
        _write(conf, SLURM_CONF.format(host=host, ctl_port=free_port(), d_port=free_port(), sock=sock,
                                       state=paths["state"], spool=paths["spool"], logs=paths["logs"],
                                       jobcomp=jobcomp, cpus=cpus, memory=memory_mb, partition=PARTITION,
                                       ctl_log=ctl_log, d_log=d_log))
        senv = {**os.environ, "SLURM_CONF": conf}
        cluster = Cluster(root=root, home=paths["home"], key=os.path.join(paths["ssh"], "id_ed25519"),
                          workdir=paths["work"], slurm_conf=conf, jobcomp=jobcomp, procs=procs)
        _start(procs, "slurmctld", [which("slurmctld"), "-D", "-i", "-f", conf], ctl_log, senv)
        _wait("answer to `scontrol ping`", lambda: "UP" in cluster.run("scontrol", "ping").stdout,
              procs, "slurmctld", ctl_log)
        _start(procs, "slurmd", [which("slurmd"), "-D", "-f", conf], d_log, senv)
        _wait(f"idle node in partition {PARTITION}",
              lambda: "idle" in cluster.run("sinfo", "-h", "-p", PARTITION, "-o", "%t").stdout,
              procs, "slurmd", d_log)

        _start_sshd(paths, cluster, procs, {"SLURM_CONF": conf, **login_env})
        return cluster
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            for proc in procs.values():
                proc.kill()
        raise


def _start_sshd(paths: dict, cluster: Cluster, procs: dict, login_env: dict):
    """sshd on 127.0.0.1 with a host key and a client key made for the test; the client's
    ~/.ssh/config names it HOST_ALIAS."""
    keygen = which("ssh-keygen")
    hostkey = os.path.join(paths["ssh"], "host_ed25519")
    for k in (hostkey, cluster.key):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", k], check=True, capture_output=True)
    shutil.copy(cluster.key + ".pub", os.path.join(paths["ssh"], "authorized_keys"))
    port, log = free_port(), os.path.join(paths["logs"], "sshd.log")
    sshd_conf = os.path.join(paths["ssh"], "sshd_config")
    setenv = " ".join(f'"{k}={v}"' for k, v in login_env.items())
    _write(sshd_conf, SSHD_CONF.format(port=port, hostkey=hostkey, ssh=paths["ssh"], setenv=setenv))
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    _start(procs, "sshd", [which("sshd"), "-D", "-e", "-f", sshd_conf], log)

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait(f"listener on 127.0.0.1:{port}", listening, procs, "sshd", log)
    os.makedirs(os.path.join(cluster.home, ".ssh"), exist_ok=True)
    _write(os.path.join(cluster.home, ".ssh", "config"),
           f"Host {HOST_ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n")
    # the login node's host key, where a user keeps the keys of the hosts they have checked
    with open(hostkey + ".pub") as f:
        cluster.host_key_line = f"[127.0.0.1]:{port} {' '.join(f.read().split()[:2])}\n"
    _write(os.path.join(cluster.home, ".ssh", "known_hosts"), cluster.host_key_line)


SLURM_CONF = """\
ClusterName=monollm-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={logs}/slurmctld.pid
SlurmdPidFile={logs}/slurmd.pid
SlurmctldLogFile={ctl_log}
SlurmdLogFile={d_log}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp}
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=1-00:00:00 State=UP
"""

SSHD_CONF = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {hostkey}
PidFile {ssh}/sshd.pid
AuthorizedKeysFile {ssh}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
SetEnv {setenv}
"""
