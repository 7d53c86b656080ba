"""A Ray cluster of real nodes on loopback (127.0.0.1) for tests.

Each node is ``ray start --block`` in its own session with its own short temp dir, one CPU and a
small object store; ``stop()`` ends exactly the processes those commands started (their process
groups, then any descendant left), never another cluster on the machine (``ray stop`` would end
every Ray process of the host). Use as a context manager so a failing test stops it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
# Ray replaces a loopback node address by the host's outward one unless its multi-node switch is
# off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): then every Ray process, drivers included, uses
# 127.0.0.1 — but `ray start --address` refuses to add a node. So each node's `ray start` runs
# with the switch off in its environment (for the processes it spawns) and on in its own process,
# where its loopback address is kept as given. Drivers need LOOPBACK_ENV in their environment.
#
# Ray >= 2.59 turns token authentication on for a head started where ~/.ray/auth_token exists (and
# a local `ray.init()` writes that file), but `ray start --address` does not send the token, so the
# second node is refused (ray-project/ray#66248's review). These test clusters keep it off by name.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
_LAUNCHER = (
    "import ray._private.ray_constants as constants, ray._private.services as services\n"
    "constants.ENABLE_RAY_CLUSTER = True\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "main()\n")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    return [sys.executable, "-c", _LAUNCHER]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class LocalRayCluster:
    """A head node and added nodes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, env: dict | None = None, num_cpus: int = 1):
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ENV,
                    # Notice a dead node in ~2 s rather than ~30 s.
                    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_timeout_ms": "1000"}
        self.num_cpus = num_cpus
        self.nodes: list[tuple[subprocess.Popen, str]] = []
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"

    def _start(self, role: list[str]) -> None:
        temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        log = open(Path(temp) / "start.log", "w")
        proc = subprocess.Popen([*_ray_cli(), "start", *role, "--block", "--node-ip-address", HOST,
                                 "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
                                 "--object-store-memory", str(100 * 2**20), "--temp-dir", temp,
                                 "--disable-usage-stats"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append((proc, temp))
        deadline = time.time() + 120
        while not self.raylet_pid(len(self.nodes) - 1):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed: {(Path(temp) / 'start.log').read_text()[-3000:]}")
            time.sleep(0.5)
        time.sleep(2)  # the raylet registers with the GCS

    def start_head(self) -> "LocalRayCluster":
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false"])
        return self

    def add_node(self) -> "LocalRayCluster":
        self._start(["--address", self.address])
        return self

    def node_addresses(self) -> list[str]:
        """The addresses the cluster's live nodes registered with (asked of the cluster)."""
        script = ("import logging, ray; ray.init(address='%s', logging_level=logging.ERROR); "
                  "print(' '.join(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))" % self.address)
        done = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=120)
        return done.stdout.split()

    def busy_workers(self, node: int, prefix: str = "ray::run_chunk") -> list[int]:
        """Pids of node ``node``'s workers running a task whose name starts with ``prefix``
        (a worker's process name is ``ray::<task>`` while it runs one)."""
        def title(pid):
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                return ""

        return [pid for pid in _descendants(self.nodes[node][0].pid) if title(pid).startswith(prefix)]

    def raylet_pid(self, node: int) -> int | None:
        """The pid of node ``node``'s raylet, or None (not started yet, or dead)."""
        for pid in _descendants(self.nodes[node][0].pid):
            if _name(pid) == "raylet":
                return pid
        return None

    def kill_raylet(self, node: int) -> None:
        """SIGKILLs node ``node``'s raylet (the node dies; its ``ray start`` ends its other processes)."""
        os.kill(self.raylet_pid(node), signal.SIGKILL)

    def stop(self) -> None:
        """Ends every process the nodes' ``ray start`` commands started; removes their temp dirs."""
        for proc, temp in reversed(self.nodes):
            pids = [(pid, _start_time(pid)) for pid in _descendants(proc.pid)]
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    continue
                break
            same = lambda pid, started: started is not None and _start_time(pid) == started
            for pid, started in pids:  # any that left the group, if still the same process
                if same(pid, started):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            deadline = time.time() + 20
            while time.time() < deadline and any(same(pid, started) for pid, started in pids):
                time.sleep(0.2)
            shutil.rmtree(temp, ignore_errors=True)
        self.nodes.clear()

    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
