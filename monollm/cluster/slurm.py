"""Slurm through the published metaflow-slurm extension (`run --with slurm`): each step's sbatch
request from its @resources, and one check of the cluster before any step runs.

metaflow-slurm 0.0.4 submits a step over SSH with sbatch, but its @slurm decorator reads neither
@resources nor @timeout: it asks for no GPU, CPUs or memory unless they are given as @slurm
attributes, and it always asks for `--time=432000`, Metaflow's 5-day default in seconds, which
sbatch reads as minutes (300 days), so on any partition with a MaxTime the job waits forever
(Reason=PartitionTimeLimit). Its `slurm step` command does take `--gres` and `--run-time-limit` (an integer that becomes
`--time`, so minutes);
`use_step_resources` passes them, and `cpus_per_task` / `memory`, from the step's decorators:

    @resources(gpu=N, cpu=C, memory=M)  ->  --gres=gpu:N  --cpus-per-task=C  --mem=MM
    the profile's resources.gpu_type = T  ->  --gres=gpu:T:N  (a typed request)
    @timeout (Metaflow's default: 5 days)  ->  --time=MINUTES
    MONOLLM_SLURM_ACCOUNT / MONOLLM_SLURM_QOS where `run` runs  ->  --account=A  --qos=Q

@slurm attributes given on the command line (`--with slurm:cpus_per_task=...,memory=...`) win.
The extension has no account or QoS option: they are added to its batch script as it renders it,
in the `slurm step` process that `run` starts for each task (with `run`'s environment).
`resume` goes through the same hooks; its cloned steps submit nothing.
Steps without @resources (start, the joins, end: no model work) run where `run` runs unless
MONOLLM_SLURM_LIGHT_STEPS=slurm; their artifacts still go through the shared datastore.

The login node's host key is checked against the user's ~/.ssh/known_hosts (or the file
MONOLLM_SLURM_KNOWN_HOSTS names; "none" turns the check off), by the cluster check and by every
connection the extension makes (it connects with known_hosts=None itself; see _HostKeyChecked).
Values put into a remote command are quoted; the extension puts slurm:remote_workdir into its own
commands unquoted, so the check refuses a work folder with characters a shell would read.

Kept free of torch: the flow's `__main__` calls `use_step_resources` in every process.
"""
from __future__ import annotations

import os
import re

from monollm.cluster.slurm_ssh import KNOWN_HOSTS_ENV, SlurmSetupError, check_host_keys, known_hosts  # noqa: F401
from monollm.cluster.slurm_ssh import fail as _fail, login_node_run as _login_node_run, remote_path

LIGHT_STEPS_ENV = "MONOLLM_SLURM_LIGHT_STEPS"
"""Environment variable: "slurm" sends the steps without @resources to Slurm too; unset or
"local": they run where `run` runs."""
REMOTE_DATASTORES = ("s3", "azure", "gs")
"""Datastores a Slurm job can download the code package from (the extension has no other way)."""
SBATCH_ENV = {"account": "MONOLLM_SLURM_ACCOUNT", "qos": "MONOLLM_SLURM_QOS"}
"""sbatch options the extension has no setting for -> the environment variable, read where `run`
runs, that gives them to every job (`#SBATCH --account=...` / `--qos=...`; unset or empty: left
out, so the cluster's default for the user applies). A cluster setting, not a profile's."""
SAFE_WORKDIR = re.compile(r"[A-Za-z0-9_./~+-]+")
"""slurm:remote_workdir as the extension can use it: it writes it into shell commands unquoted."""
SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""An account or QoS name: it is written into a batch script line, so nothing else is let in."""

_REQUESTS: dict[str, dict] = {}  # step -> what its job asks for, filled by step_init in this process
_GPU_TYPE = {"source": ""}  # resources.gpu_type: a str, or the flow's config_expr (see use_step_resources)
_CHECKED: list = []  # one cluster check per process


def slurm_time(seconds: int) -> str:
    """Seconds as sbatch's `--time` D-HH:MM:SS (a bare number would be read as minutes)."""
    seconds = int(seconds)
    if seconds <= 0:
        raise SlurmSetupError(f"@timeout must be positive for a Slurm job, got {seconds} s")
    days, rest = divmod(seconds, 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def parse_slurm_time(text: str) -> int | None:
    """Seconds of a Slurm time limit as sinfo prints it ("infinite", "1-00:00:00", "12:00:00",
    "30:00", "45"); None for no limit."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:  # minutes
        parts = [0, parts[0], 0]
    elif len(parts) == 2 and not days:  # MM:SS
        parts = [0, *parts]
    elif len(parts) == 2:  # D-HH:MM
        parts = [*parts, 0]
    h, m, s = parts
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def job_request(resources: dict, seconds: int, gpu_type: str = "") -> dict:
    """What one step's Slurm job asks for, from its @resources attributes (cpu, gpu, memory in MB;
    values may be strings), its run-time limit in seconds and the profile's resources.gpu_type
    ("" for any GPU; validated by monollm.checks.gpu_type when the profile is read).

    Returns {"cpus_per_task": str, "memory": "<MB>M", "gres": "gpu:N", "gpu:TYPE:N" or None,
    "minutes": int (sbatch's `--time`, rounded up), "time": the same as D-HH:MM:SS, "gpu": int,
    "gpu_type": the type when GPUs are asked for, else ""}.
    """
    gpu = int(float(resources.get("gpu") or 0))
    gpu_type = gpu_type if gpu > 0 else ""
    minutes = -(-int(seconds) // 60)
    return {"cpus_per_task": str(int(float(resources.get("cpu") or 1))),
            "memory": f"{int(float(resources.get('memory') or 4096))}M",
            "gres": ":".join(["gpu", *([gpu_type] if gpu_type else []), str(gpu)]) if gpu > 0 else None,
            "minutes": minutes, "time": slurm_time(minutes * 60), "gpu": gpu, "gpu_type": gpu_type}


def extra_sbatch_options() -> dict:
    """{"account": ..., "qos": ...} from SBATCH_ENV's variables, only those set; a value that is
    not a plain Slurm name raises SlurmSetupError naming its variable."""
    out = {}
    for option, env in SBATCH_ENV.items():
        value = os.environ.get(env, "").strip()
        if value and not SLURM_NAME.fullmatch(value):
            raise SlurmSetupError(f"{env}={value!r} is not a Slurm {option} name (letters, digits, '_', '.', '-')")
        if value:
            out[option] = value
    return out


def light_steps_on_slurm() -> bool:
    """Whether steps without @resources go to Slurm too (MONOLLM_SLURM_LIGHT_STEPS)."""
    value = os.environ.get(LIGHT_STEPS_ENV, "local").strip().lower()
    if value not in ("local", "slurm"):
        raise SlurmSetupError(f"{LIGHT_STEPS_ENV} must be 'local' or 'slurm', got {value!r}")
    return value == "slurm"


def use_step_resources(gpu_type="") -> None:
    """Make metaflow-slurm's @slurm request what each step's @resources and @timeout ask for, add
    the account and QoS (SBATCH_ENV) to every batch script, run light steps locally (see
    LIGHT_STEPS_ENV), and check the cluster once before a run starts. Does nothing when
    metaflow-slurm is not installed.

    `gpu_type`: the Slurm GPU type of every step that asks for GPUs ("" for any), or a
    `config_expr` giving it from the flow's profile (the flow cannot hand it to @resources,
    which has no such attribute); a later call replaces it.
    """
    _GPU_TYPE["source"] = gpu_type
    classes = _extension_classes()
    if classes is None:
        return
    SlurmDecorator, SlurmJob = classes["SlurmDecorator"], classes["SlurmJob"]
    if getattr(SlurmDecorator, "_monollm_resources", False):
        return
    SlurmDecorator._monollm_resources = True
    _ORIGINAL.update({name: getattr(classes[name.split(".")[0]], name.split(".")[1]) for name in PATCHED})
    step_init, runtime_init, runtime_step_cli = (SlurmDecorator.step_init, SlurmDecorator.runtime_init,
                                                 SlurmDecorator.runtime_step_cli)

    def init_step(self, flow, graph, step, decos, environment, flow_datastore, logger):
        step_init(self, flow, graph, step, decos, environment, flow_datastore, logger)
        _apply_request(self, step, decos, asked_gpu_type())

    def init_runtime(self, flow, graph, package, run_id):
        runtime_init(self, flow, graph, package, run_id)
        if not _CHECKED:
            _CHECKED.append(True)
            check_cluster(self.attributes, _REQUESTS, self.flow_datastore.TYPE)

    def step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        if not self._monollm_remote:
            return  # the runtime runs the step here, as without --with slurm
        runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context)
        gres = _REQUESTS[self.step]["gres"]
        if retry_count <= max_user_code_retries and gres:
            cli_args.command_options["gres"] = gres  # an option of `slurm step`, not a decorator attribute

    SlurmDecorator.step_init, SlurmDecorator.runtime_init, SlurmDecorator.runtime_step_cli = (
        init_step, init_runtime, step_cli)
    _add_sbatch_options(SlurmJob)
    check_host_keys(classes["SlurmClient"])


PATCHED = {"SlurmDecorator.step_init": ("self", "flow", "graph", "step", "decos", "environment", "flow_datastore",
                                         "logger"),
           "SlurmDecorator.runtime_init": ("self", "flow", "graph", "package", "run_id"),
           "SlurmDecorator.runtime_step_cli": ("self", "cli_args", "retry_count", "max_user_code_retries",
                                               "ubf_context"),
           "SlurmJob.create_slurm_script": ("self",)}
"""The metaflow-slurm methods use_step_resources wraps, with the parameters the wrappers call
them with, in order (metaflow-slurm 0.0.4; private API: tests/test_slurm.py compares them with
the installed extension's). slurm_ssh.check_host_keys also wraps SlurmClient.__init__, passing
every argument on; it relies on the client's `asyncssh` attribute (see slurm_ssh)."""
_ORIGINAL: dict = {}  # PATCHED's methods as the extension defines them, kept when they are wrapped


def extension_parameters() -> dict:
    """{name in PATCHED: the parameter names of the installed extension's method, in order}; {}
    without metaflow-slurm. Reads the extension's own methods, also once they are wrapped."""
    import inspect

    classes = _extension_classes()
    if classes is None:
        return {}
    out = {}
    for name in PATCHED:
        cls, attr = name.split(".")
        method = _ORIGINAL.get(name) or getattr(classes[cls], attr)
        out[name] = tuple(inspect.signature(method).parameters)
    return out


def _extension_classes() -> dict | None:
    try:
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_client import SlurmClient
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_decorator import SlurmDecorator
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_job import SlurmJob
    except ImportError:
        return None
    return {"SlurmDecorator": SlurmDecorator, "SlurmJob": SlurmJob, "SlurmClient": SlurmClient}


def _add_sbatch_options(job_class) -> None:
    """The extension's batch script takes only its own options; `slurm step` (a child of `run`,
    with its environment) renders the script through job_class.create_slurm_script, so the
    account and QoS are added to the script's #SBATCH lines there."""
    create = job_class.create_slurm_script

    def create_script(self):
        create(self)
        self.slurm_job_script.sbatch_options.update(extra_sbatch_options())
        return self

    job_class.create_slurm_script = create_script


def asked_gpu_type() -> str:
    """The GPU type every GPU step asks for ("" for any): use_step_resources's `gpu_type`,
    evaluated now if it is a config_expr (steps are set up once the profile is read)."""
    source = _GPU_TYPE["source"]
    return str(source() if callable(source) else source or "")


def _apply_request(deco, step: str, decos: list, gpu_type: str = "") -> None:
    """Fill the decorator's job request for `step` from its other decorators and the profile's
    GPU type (see module doc)."""
    from metaflow.plugins.resources_decorator import ResourcesDecorator
    from metaflow.plugins.timeout_decorator import get_run_time_limit_for_task

    resources = next((d.attributes for d in decos if isinstance(d, ResourcesDecorator)), None)
    deco._monollm_remote = resources is not None or light_steps_on_slurm()
    request = job_request(resources or ResourcesDecorator.defaults, get_run_time_limit_for_task(decos), gpu_type)
    for key in ("cpus_per_task", "memory"):
        if deco.attributes.get(key) is None:  # a value given with --with slurm:... wins
            deco.attributes[key] = request[key]
    deco.run_time_limit = request["minutes"]  # `slurm step --run-time-limit`, written as sbatch's --time
    if deco._monollm_remote:
        _REQUESTS[step] = {**request, "partition": deco.attributes.get("partition")}


def check_cluster(attributes: dict, requests: dict, datastore: str) -> None:
    """Before any step runs: the datastore is one a job can read, the login node answers with the
    key, sbatch is there, and each partition the steps use exists, has GPUs (gres) where a step
    asks for them and allows the steps' time. Raises SlurmSetupError (a MetaflowException on
    the command line) naming the setting."""
    if not requests:
        return
    extra_sbatch_options()  # a bad account or QoS name stops the run here, not in its first job
    if datastore not in REMOTE_DATASTORES:
        _fail(f"Slurm jobs read the code package and artifacts from a shared datastore, but this run's is "
              f"{datastore!r}: set METAFLOW_DEFAULT_DATASTORE=s3 and METAFLOW_DATASTORE_SYSROOT_S3 "
              f"(or azure / gs)")
    for key, env in (("address", "METAFLOW_SLURM_ADDRESS"), ("ssh_key_file", "METAFLOW_SLURM_SSH_KEY_FILE")):
        if not attributes.get(key):
            _fail(f"no Slurm login node setting {key}: set {env} (or --with slurm:{key}=...)")
    key_file = os.path.expanduser(attributes["ssh_key_file"])
    if not os.path.isfile(key_file):
        _fail(f"METAFLOW_SLURM_SSH_KEY_FILE (slurm:ssh_key_file) = {key_file!r}: no such file")
    workdir = attributes.get("remote_workdir")
    if workdir and not SAFE_WORKDIR.fullmatch(workdir):
        _fail(f"METAFLOW_SLURM_REMOTE_WORKDIR (slurm:remote_workdir) = {workdir!r}: metaflow-slurm puts it into "
              f"shell commands unquoted, so only letters, digits and _ . / ~ + - are allowed")
    out = _login_node_run(attributes, key_file, _probe_command(attributes))
    if "MONOLLM_NO_SBATCH" in out:
        _fail(f"sbatch is not found on the Slurm login node {attributes['address']!r} (PATH, or `module load slurm`)")
    partitions = parse_sinfo(out)
    for partition in sorted({r["partition"] or "" for r in requests.values()}):
        steps = {s: r for s, r in requests.items() if (r["partition"] or "") == partition}
        check_partition(partition, steps, partitions)


def _probe_command(attributes: dict) -> str:
    from metaflow_extensions.slurm_ext.plugins.slurm.slurm_client import _LOAD_SLURM_PREFIX

    # the job writes its output to stdout/ and stderr/ under the work folder, which sbatch does not create
    workdir = remote_path(attributes.get("remote_workdir") or "~/metaflow")
    return (_LOAD_SLURM_PREFIX + "command -v sbatch >/dev/null || { echo MONOLLM_NO_SBATCH; exit 0; }\n"
            f"mkdir -p {workdir}/stdout {workdir}/stderr\n" + "sinfo --noheader --format='%P|%l|%G'")


def parse_sinfo(text: str) -> dict:
    """`sinfo --format='%P|%l|%G'` lines -> {partition: {"default": bool, "time": seconds or None,
    "gpus": most GPUs of one node (0: no gpu gres), "gpu_types": {type: most GPUs of that type
    on one node} ("" for GPUs without a type)}}; a partition may span several lines."""
    out: dict = {}
    for line in text.splitlines():
        if line.count("|") != 2:
            continue
        name, limit, gres = (p.strip() for p in line.split("|"))
        default = name.endswith("*")
        entry = out.setdefault(name.rstrip("*"), {"default": False, "time": parse_slurm_time(limit), "gpus": 0,
                                                  "gpu_types": {}})
        entry["default"] |= default
        entry["gpus"] = max(entry["gpus"], gres_gpus(gres))
        for kind, count in gres_gpu_types(gres).items():
            entry["gpu_types"][kind] = max(entry["gpu_types"].get(kind, 0), count)
    return out


def gres_gpu_types(gres: str) -> dict:
    """GPUs of each type in a node's gres string: "gpu:a100:2(S:0),gpu:v100:2,shard:8" ->
    {"a100": 2, "v100": 2}; "gpu:4" -> {"": 4} (no type); "(null)" -> {}."""
    types: dict = {}
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) else ""
        types[kind] = types.get(kind, 0) + count
    return types


def gres_gpus(gres: str) -> int:
    """GPUs in a node's gres string ("gpu:a100:4(S:0-1),shard:8" -> 4; "(null)" -> 0)."""
    return sum(gres_gpu_types(gres).values())


def check_partition(name: str, requests: dict, partitions: dict) -> None:
    """One partition (`name`; "" = the cluster's default) against the steps sent to it."""
    if not partitions:
        _fail("sinfo on the Slurm login node lists no partitions")
    label = name or next((p for p, e in partitions.items() if e["default"]), "")
    if name and name not in partitions:
        _fail(f"Slurm partition {name!r} (slurm:partition) does not exist; the cluster has: "
              f"{', '.join(sorted(partitions))}")
    if not label:
        _fail(f"the Slurm cluster has no default partition: choose one of {', '.join(sorted(partitions))} "
              f"with --with slurm:partition=NAME")
    part = partitions[label]
    gpu_steps = {s: r["gpu"] for s, r in requests.items() if r["gpu"] > part["gpus"]}
    if gpu_steps:
        has = f"at most {part['gpus']} GPUs per node" if part["gpus"] else "no GPUs (no gpu gres)"
        _fail(f"steps {', '.join(sorted(gpu_steps))} ask for {max(gpu_steps.values())} GPU(s) (the profile's "
              f"resources.gpu / resources.train_gpu), but Slurm partition {label!r} has {has}: choose a GPU "
              f"partition with --with slurm:partition=NAME, or set resources.gpu = 0 for a CPU run")
    _check_gpu_type(label, requests, part["gpu_types"])
    too_long = {s: r["time"] for s, r in requests.items()
                if part["time"] is not None and r["minutes"] * 60 > part["time"]}
    if too_long:
        _fail(f"steps {', '.join(sorted(too_long))} ask for --time={max(too_long.values())} (their @timeout; "
              f"Metaflow's default is 5 days), but Slurm partition {label!r} allows at most "
              f"{slurm_time(part['time'])}: add e.g. --with timeout:hours=N within that limit")


def _check_gpu_type(label: str, requests: dict, offered: dict) -> None:
    """Steps that ask for a GPU type (resources.gpu_type) against the types partition `label`
    offers ({type: most GPUs of it on one node}, "" = no type)."""
    typed = {s: r for s, r in requests.items() if r.get("gpu_type")}
    if not typed:
        return
    kind = next(iter(typed.values()))["gpu_type"]  # one profile: one type for every step
    short = {s: r["gpu"] for s, r in typed.items() if r["gpu"] > offered.get(kind, 0)}
    if short:
        has = ", ".join(f"{k or 'no type'}: {n}" for k, n in sorted(offered.items())) or "none"
        _fail(f"steps {', '.join(sorted(short))} ask for {max(short.values())} GPU(s) of type {kind!r} (the "
              f"profile's resources.gpu_type), but one node of Slurm partition {label!r} has at most "
              f"{offered.get(kind, 0)} of them (gpu gres per node by type: {has}): set resources.gpu_type to "
              f"a type it has (\"\" for any), or choose another partition with --with slurm:partition=NAME")
