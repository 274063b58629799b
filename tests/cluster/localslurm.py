"""A single-node SLURM on loopback for the integration tests: munge, MariaDB + slurmdbd (so that ``sacct`` works),
slurmctld and slurmd with fake GPUs.

Debian's packages (slurm-wlm 22.05, munge, mariadb-server) are installed with apt-get where missing. Every daemon runs
in the foreground as a child of this process, is stopped by its PID in `LocalSlurm.stop` (and gets SIGTERM from the
kernel should this process die first); `stop` also removes the state directory and restores /etc/slurm. Facts and
pitfalls: ../shared/slurm/README.md.
"""

import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
PROGRAMS = [
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "sbatch",
    "sacct",
    "sacctmgr",
    "munged",
    "mariadbd",
    "mariadb-install-db",
]
# The jobstep plugin strips SLURM_CONF before it calls srun inside a job, so SLURM must find its config at the
# compiled-in default path (pitfall 1).
ETC = Path("/etc/slurm")
CONFIG_FILES = ["slurm.conf", "gres.conf", "slurmdbd.conf"]
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
BASE_PREFIX = "cytodml-slurm-"
PR_SET_PDEATHSIG = 1
FAKE_GPU_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]
FAKE_GPUS = len(FAKE_GPU_DEVICES)


class Unavailable(RuntimeError):
    """SLURM cannot be stood up on this machine; the message says why."""


def _run(command, timeout=60, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def install(timeout=600):
    """Install the packages with apt-get where a program is missing; `Unavailable` where that is impossible."""
    missing = [program for program in PROGRAMS if not shutil.which(program, path=f"{os.environ['PATH']}:/usr/sbin")]
    if not missing:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{', '.join(missing)} not installed and not root, so apt-get cannot install them")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} not installed and no apt-get on this machine")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        try:
            result = _run(command, timeout=timeout, env=environment)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(command)} did not finish in {timeout} s") from None
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")


def _die_with_parent():
    """In a daemon's process before exec: SIGTERM it when the test process dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(check, what, timeout=30.0, process=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    tail = Path(log).read_text(errors="replace")[-2000:] if log and Path(log).exists() else ""
    raise RuntimeError(f"{what} did not come up in {timeout} s\n{tail}")


def _succeeds(*command) -> bool:
    try:
        return _run(list(command), timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class LocalSlurm:
    """One partition on one node, ``localhost``, that declares ``cpus``, ``memory_mb`` and ``gpus`` fake GPUs.

    The node may declare more CPUs and memory than the machine has (``SlurmdParameters=config_overrides``), so that
    a profile's requests meant for a cluster node are schedulable on a small CI runner; jobs then share the real cores.
    Use as a context manager, or call `start` and, always, `stop`.
    """

    def __init__(self, *, cpus=16, memory_mb=64000, gpus=FAKE_GPUS, partition="debug", account="dml", kill_wait=5):
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.partition, self.account, self.kill_wait = partition, account, kill_wait
        self.base = None
        self._daemons = []  # (name, Popen) in start order
        self._saved = {}  # /etc/slurm file -> its stand-in while ours is in place

    # ---- public -----------------------------------------------------------------------------------------------------

    def start(self):
        """Write the configs and start munged (unless one answers), MariaDB, slurmdbd, slurmctld and slurmd."""
        if os.geteuid() != 0:
            raise Unavailable("the daemons need root (munged runs as user munge, slurmd spawns jobs as their user)")
        if (ETC / "slurm.conf").exists() and _succeeds("scontrol", "ping"):
            raise Unavailable(f"a SLURM controller configured by {ETC / 'slurm.conf'} already answers here")
        # not under pytest's 0700 tmp dirs: munged (user munge) and slurmstepd must reach it
        self.base = Path(tempfile.mkdtemp(prefix=BASE_PREFIX))
        self.base.chmod(0o755)
        for part in ("etc", "state", "spool", "log", "db"):
            (self.base / part).mkdir()
        ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        self._install_configs(ports)
        self._start_munge()
        self._start_mariadb(ports["mariadb"])
        self._start(["slurmdbd", "-D"], "slurmdbd")
        _wait_for(
            lambda: _succeeds("sacctmgr", "-n", "list", "cluster"),
            "slurmdbd",
            process=self._process("slurmdbd"),
            log=self.base / "log/slurmdbd.log",
        )
        self._start(["slurmctld", "-D", "-c"], "slurmctld")
        _wait_for(
            lambda: "UP" in _run(["scontrol", "ping"]).stdout,
            "slurmctld",
            process=self._process("slurmctld"),
            log=self.base / "log/slurmctld.log",
        )
        self._start(["slurmd", "-D", "-N", "localhost"], "slurmd")
        _wait_for(
            lambda: _run(["sinfo", "-h", "-o", "%t"]).stdout.strip() == "idle",
            "slurmd",
            process=self._process("slurmd"),
            log=self.base / "log/slurmd.log",
        )
        for command in (
            ["sacctmgr", "-i", "add", "account", self.account, "Description=cytodml tests", "Organization=local"],
            ["sacctmgr", "-i", "add", "user", getpass.getuser(), f"Account={self.account}"],
        ):
            result = _run(command)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")
        return self

    def stop(self):
        """Cancel every job of this cluster, stop each daemon by its PID (newest first) and restore /etc/slurm."""
        try:
            if self._process("slurmctld") is not None and self._process("slurmctld").poll() is None:
                self._cancel_all_jobs()
        finally:
            self._stop_daemons()
            self._restore_configs()

    def _stop_daemons(self):
        for _, process in reversed(self._daemons):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._daemons.clear()

    def _restore_configs(self):
        for name in CONFIG_FILES:
            target = ETC / name
            if target.is_symlink() and self.base is not None and str(os.readlink(target)).startswith(str(self.base)):
                target.unlink()
            saved = self._saved.pop(name, None)
            if saved is not None:
                saved.rename(target)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def log_tails(self, chars=1500) -> str:
        """The end of every daemon's log, for a failing test's message."""
        if self.base is None:
            return ""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted((self.base / "log").glob("*"))
        )

    # ---- bring-up ---------------------------------------------------------------------------------------------------

    def _process(self, name):
        return next((process for daemon, process in self._daemons if daemon == name), None)

    def _start(self, command, name, **kwargs):
        log = open(self.base / "log" / f"{name}.out", "w")  # noqa: SIM115 - the daemon writes it until stop()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **kwargs,
        )
        log.close()
        self._daemons.append((name, process))
        return process

    def _install_configs(self, ports):
        base = self.base
        # one device file per fake GPU: without File= the node goes INVAL, and SLURM counts GPUs by their files
        devices = ",".join(FAKE_GPU_DEVICES[: self.gpus])
        (base / "etc/gres.conf").write_text(f"NodeName=localhost Name=gpu File={devices}\n" if self.gpus else "")
        (base / "etc/slurm.conf").write_text(f"""\
ClusterName=cytodml
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/state/slurmctld.pid
SlurmdPidFile={base}/spool/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait={self.kill_wait}
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports["slurmdbd"]}
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MinJobAge=600
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \
{f"Gres=gpu:{self.gpus}" if self.gpus else ""} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        (base / "etc/slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["slurmdbd"]}
SlurmUser=root
LogFile={base}/log/slurmdbd.log
PidFile={base}/state/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        (base / "etc/slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a config others can read
        ETC.mkdir(parents=True, exist_ok=True)
        for name in CONFIG_FILES:
            target = ETC / name
            saved = target.with_name(f"{name}.cytodml-saved")
            if target.is_symlink() and Path(os.readlink(target)).parent.parent.name.startswith(BASE_PREFIX):
                # left by a test process that was killed (its daemons died with it): cleared, and the file it had
                # set aside is restored at stop
                shutil.rmtree(Path(os.readlink(target)).parent.parent, ignore_errors=True)
                target.unlink()
                if saved.exists() or saved.is_symlink():
                    self._saved[name] = saved
            elif target.exists() or target.is_symlink():
                self._saved[name] = target.rename(saved)
            target.symlink_to(base / "etc" / name)

    def _start_munge(self):
        """Reuse a munged that answers (someone else's: not ours to stop), else start one as user munge."""
        if _succeeds("sh", "-c", "munge -n | unmunge"):
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:
            result = _run(["mungekey", "--create", f"--keyfile={key}"])
            if result.returncode != 0:
                raise Unavailable(f"mungekey failed: {result.stderr}")
            shutil.chown(key, "munge", "munge")
            key.chmod(0o600)
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        process = self._start(["munged", "--foreground", "--force"], "munged", user="munge", group="munge")
        _wait_for(
            lambda: _succeeds("sh", "-c", "munge -n | unmunge"),
            "munged",
            timeout=10,
            process=process,
            log=self.base / "log/munged.out",
        )

    def _start_mariadb(self, port):
        data, sock = self.base / "db/data", self.base / "db/mysqld.sock"
        result = _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        process = self._start(
            [
                "mariadbd",
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--pid-file={self.base}/db/mariadbd.pid",
                "--bind-address=127.0.0.1",
                f"--port={port}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=128M",
                "--innodb-lock-wait-timeout=900",
                f"--log-error={self.base}/log/mariadb.err",
            ],
            "mariadbd",
        )
        _wait_for(
            lambda: _succeeds("mariadb-admin", f"--socket={sock}", "ping"),
            "MariaDB",
            process=process,
            log=self.base / "log/mariadb.err",
        )
        sql = (
            "CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'slurm'; CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY "
            "'slurm'; CREATE DATABASE slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
        )
        result = _run(["mariadb", f"--socket={sock}", "-u", "root", "-e", sql])
        if result.returncode != 0:
            raise RuntimeError(f"creating the accounting database failed: {result.stderr}")

    def _cancel_all_jobs(self):
        jobs = _run(["squeue", "-h", "-o", "%i"]).stdout.split()
        if not jobs:
            return
        _run(["scancel", *jobs])
        deadline = time.monotonic() + self.kill_wait + 15
        while time.monotonic() < deadline and _run(["squeue", "-h", "-o", "%i"]).stdout.strip():
            time.sleep(0.5)
