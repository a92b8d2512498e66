"""A real two-node Slurm (Debian's slurmctld + two slurmd + munge) started by hand for the tests.

Both nodes are this machine: one slurmd per node name (``slurmd -N``), named after the host and
``localhost`` so that a job's first node name (its MASTER_ADDR) resolves either way.
Everything lives in one temporary folder: config, state, spools, logs, pid files and a munged
of its own on its own socket, so it neither needs nor disturbs a system Slurm or munge.
Clients find it through SLURM_CONF (``Cluster.env``). ``stop()`` ends the daemons by the
PIDs they wrote and removes the folder.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from megatron_ext.net import free_port

APT_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CPUS = 8  # per node, advertised (SlurmdParameters=config_overrides): 8 tasks on a 2-core machine


class ClusterError(RuntimeError):
    pass


def missing_packages() -> List[str]:
    return [name for name, path in DAEMONS.items() if not Path(path).exists()] + \
        [tool for tool in ("sbatch", "srun", "scontrol", "scancel") if shutil.which(tool) is None]


def install_packages(packages: List[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode:
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)  # stale lists
        subprocess.run(install, check=True, stdout=subprocess.DEVNULL, env=env)


def _wait_for(what: str, check, timeout: float, log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise ClusterError(f"{what} did not come up in {timeout:.0f} s\n{tail}")


class Cluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="megatron-ext-slurm-"))
        self.root.chmod(0o755)  # munged runs as 'munge' and must reach its socket folder
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host] if self.host == "localhost" else [self.host, "localhost"]
        self.conf = self.root / "slurm.conf"
        self.pidfiles: Dict[str, Path] = {name: self.root / f"{name}.pid" for name in ("munged", "slurmctld")}
        self.pidfiles.update({f"slurmd-{node}": self.root / f"slurmd-{node}.pid" for node in self.nodes})
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- start ------------------------------------------------------------------------
    def start(self) -> "Cluster":
        self._check_hostname()
        self._start_munge()
        self._write_config()
        daemons = [("slurmctld", [DAEMONS["slurmctld"]])]
        daemons += [(f"slurmd-{node}", [DAEMONS["slurmd"], "-N", node]) for node in self.nodes]
        for name, command in daemons:
            subprocess.run([*command, "-f", str(self.conf)], check=True, env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _wait_for(f"{name} pid file", self.pidfiles[name].exists, 20, self.root / f"{name}.log")
        _wait_for("nodes idle", self._node_idle, 60, self.root / f"slurmd-{self.host}.log")
        return self

    def _check_hostname(self) -> None:
        # Job scripts use the node name as MASTER_ADDR (scontrol show hostnames).
        try:
            socket.gethostbyname(self.host)
        except OSError:
            raise ClusterError(f"host name {self.host!r} does not resolve: add '127.0.0.1 {self.host}' "
                               "to /etc/hosts") from None

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
        folder = self.munge_socket.parent
        folder.mkdir()
        munge = pwd.getpwnam("munge")
        for path in (folder,):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        pidfile = folder / "munged.pid"
        subprocess.run(["runuser", "-u", "munge", "--", DAEMONS["munged"], f"--socket={self.munge_socket}",
                        f"--pid-file={pidfile}", f"--log-file={folder / 'munged.log'}",
                        f"--seed-file={folder / 'munged.seed'}"], check=True)
        _wait_for("munged pid file", pidfile.exists, 10, folder / "munged.log")
        shutil.copy(pidfile, self.pidfiles["munged"])

    def _write_config(self) -> None:
        r = self.root
        (r / "state").mkdir()
        for node in self.nodes:
            (r / "spool" / node).mkdir(parents=True)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(f"""\
ClusterName=ci
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs restart after cred_expire (default 120 s).
AuthInfo=cred_expire=10,socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}/%n
SlurmctldPidFile={self.pidfiles['slurmctld']}
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r}/slurmd-%n.log
# No cgroups in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2,bf_interval=2
# No DependencyParameters=kill_invalid_depend: the scripts must cancel dependents themselves.
JobCompType=jobcomp/filetxt
JobCompLoc={r / 'jobcomp.txt'}
MailProg=/bin/true
ReturnToService=2
KillWait=10
# Finished jobs stay visible to scontrol for the whole test session.
MinJobAge=3600
""" + "".join(f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={CPUS} "
                  f"RealMemory={memory} State=UNKNOWN\n" for node in self.nodes)
            + f"PartitionName=ci Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP\n")

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _active_jobs(self) -> bool:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and bool(out.stdout.strip())

    # -- use --------------------------------------------------------------------------
    def job(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job`` fields (finished jobs stay visible for MinJobAge)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True)
        if out.returncode:
            raise ClusterError(f"scontrol show job {job_id}: {out.stderr.strip()}")
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait(self, job_ids: List[str], timeout: float) -> Dict[str, Dict[str, str]]:
        """Poll until every job has left PENDING/RUNNING/REQUEUED...; their final records."""
        active = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
        deadline = time.monotonic() + timeout
        while True:
            jobs = {j: self.job(j) for j in job_ids}
            if all(info["JobState"] not in active for info in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                states = {j: info["JobState"] for j, info in jobs.items()}
                subprocess.run(["scancel", *job_ids], env=self.env)
                raise ClusterError(f"jobs still active after {timeout:.0f} s: {states}")
            time.sleep(1)

    # -- stop -------------------------------------------------------------------------
    def stop(self) -> List[int]:
        """Cancel the jobs, stop the daemons by their PIDs (slurmd first), remove the folder.
        Returns the PIDs of job processes that outlived their jobs (then ended here)."""
        if self.pidfiles["slurmctld"].exists():
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 30  # let slurmd end the jobs' processes
            while time.monotonic() < deadline and self._active_jobs():
                time.sleep(0.5)
        for name in [*(f"slurmd-{node}" for node in self.nodes), "slurmctld", "munged"]:
            pidfile = self.pidfiles[name]
            if not pidfile.exists():
                continue
            pid = int(pidfile.read_text().split()[0])
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, 9)
        leftovers = self._job_processes()
        for pid in leftovers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return leftovers

    def _job_processes(self) -> List[int]:
        """Processes started by this cluster's jobs: they inherit SLURM_CONF from the submission."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone (the daemons are not our children after daemonizing).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
