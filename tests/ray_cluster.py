"""A real Ray cluster on this machine for the tests: a head and worker nodes, each its own ``ray start --block``
process group (its own raylet), on the loopback address 127.0.0.2, with small object stores and one CPU each.

Each node's processes inherit the environment given to it, so a worker can be handed its own ``AIMATRIX_STORE``
(a node that does not share the driver's store). ``kill_node`` ends a node at once (SIGKILL to its whole process
group: raylet, workers and their children), as a machine that dies would; ``stop`` ends everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODE_IP = "127.0.0.2"
OBJECT_STORE_BYTES = 80 * 2**20
# Ray's settings (read from RAY_<name> by its processes): the head notices a dead node within seconds, so the
# tests that kill one do not wait Ray's default quarter of a minute.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NODE_IP, 0))
        return sock.getsockname()[1]


class LocalCluster:
    """Start with ``head()``, add nodes with ``add_node()``; ``address`` is the head's GCS address."""

    def __init__(self) -> None:
        # A short temp dir: Ray's socket paths must stay under the kernel's 107-byte limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.address: str | None = None
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], env: dict[str, str] | None, cpus: int, resources: dict) -> subprocess.Popen:
        command = [
            _ray_cli(),
            "start",
            f"--node-ip-address={NODE_IP}",
            f"--num-cpus={cpus}",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            "--block",
            *args,
        ]
        full_env = {**os.environ, **FAST_FAILURE_DETECTION, "RAY_AUTH_MODE": "disabled", **(env or {})}
        log = open(Path(self.temp_dir) / f"node{len(self.nodes)}.log", "w")  # noqa: SIM115 - kept by the node
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(process)
        return process

    def head(self, resources: dict, cpus: int = 1, env: dict[str, str] | None = None) -> str:
        """Start the head node offering ``resources``; returns its address once it accepts connections."""
        port = _free_port()
        args = [
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={_free_port()}",
            "--include-dashboard=false",
            f"--temp-dir={self.temp_dir}",
        ]
        self._start(args, env, cpus, resources)
        self.address = f"{NODE_IP}:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection((NODE_IP, port), timeout=1).close()
                return self.address
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not start; see {self.temp_dir}/node0.log")

    def add_node(self, resources: dict, cpus: int = 1, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a worker node joining the head, offering ``resources``; returns its process (group leader)."""
        return self._start([f"--address={self.address}"], env, cpus, resources)

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        """Wait until ``count`` nodes are alive (the caller is connected with ray.init)."""
        import ray

        deadline = time.monotonic() + timeout_s
        while sum(1 for n in ray.nodes() if n["Alive"]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} Ray nodes came up; see {self.temp_dir}")
            time.sleep(0.5)

    def kill_node(self, process: subprocess.Popen) -> None:
        """End a node at once: SIGKILL to its process group (raylet, workers and the cells they run)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)

    def stop(self) -> None:
        """End every node at once (SIGKILL to each group: a test cluster has nothing to save, and raylets and GCS
        servers take seconds to end on SIGTERM) and remove the cluster's temporary directory."""
        for process in reversed(self.nodes):
            self.kill_node(process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
