"""A real one-node SLURM cluster (Debian's slurm-wlm) with a GPU GRES, for the cluster test.

Recipe: ../shared/ENVIRONMENT.md. Everything it writes lives in one scratch directory (configuration,
state, logs) except munge's key, and every daemon it starts is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
# srun inside a job step reads this path whatever SLURM_CONF said at sbatch time
SYSTEM_CONF = Path("/etc/slurm")


def why_not_possible() -> str | None:
    """None when a cluster can be stood up here, else the reason."""
    if os.geteuid() != 0:
        return "standing up slurmctld/slurmd and munged needs root"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "slurm-wlm is not installed and there is no apt-get to install it"
    existing = SYSTEM_CONF / "slurm.conf"
    if existing.exists() and not existing.is_symlink():
        return f"{existing} belongs to a real SLURM installation; the test does not touch it"
    return None


def install() -> None:
    """Debian's slurm-wlm and munge, when they are not there yet."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    host: str = field(default_factory=socket.gethostname)
    pids: dict[str, int] = field(default_factory=dict)
    linked: list[Path] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What client commands (sbatch, squeue, scontrol) need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=finetox-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
""")
        # A GPU count with no device file leaves the node INVAL: /dev/null stands in for the GPU.
        (r / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n")
        # Job steps (srun, which Snakemake's job-side executor calls) look in /etc/slurm: link ours there.
        SYSTEM_CONF.mkdir(parents=True, exist_ok=True)
        for name in ("slurm.conf", "gres.conf"):
            link = SYSTEM_CONF / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(r / name)
            self.linked.append(link)

    def _start_munge(self) -> None:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(os.urandom(1024))
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o400)
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        pidfile = Path("/run/munge/munged.pid")  # munged runs as munge: its own directory
        pidfile.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        self.pids["munged"] = self._pid(pidfile, "munged")

    def start(self) -> None:
        self.write_config()
        self._start_munge()
        env = {**os.environ, **self.env}
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.conf)], check=True, env=env)
            self.pids[daemon] = self._pid(self.root / f"{daemon}.pid", daemon)
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%t").stdout, "an idle node", timeout=60)

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.env})

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers (MinJobAge keeps finished ones), as scontrol's key=value fields."""
        out = self.run("scontrol", "show", "job", "-o").stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                jobs.append(dict(part.split("=", 1) for part in line.split() if "=" in part))
        return jobs

    def stop(self) -> None:
        for link in self.linked:
            link.unlink(missing_ok=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    @classmethod
    def _pid(cls, pidfile: Path, daemon: str) -> int:
        """The daemon's pid once it has written it: the file appears (empty) before the number does."""
        def written() -> str:
            return pidfile.read_text().strip() if pidfile.exists() else ""
        cls._wait(lambda: written().isdigit(), f"{daemon}'s pid file {pidfile}")
        return int(written())

    @staticmethod
    def _wait(ready, what: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not come up within {timeout} s")
