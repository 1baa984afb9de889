"""The Ray executor: a run's builds, analyses and cells as Ray tasks spread over a cluster's nodes, with the same
methods as ``bench.executor.LocalExecutor`` and the same rows, written by the runner the moment each arrives.

Resources (what makes two timings never share a device):

- Builds, FLOP counts and FP32 references are tasks of one CPU each (``num_cpus=1``), one task per model (its
  FP32 export, then its FP16 and INT8 conversions, in a child process each), so each artifact is built once per
  content key in a run, on whichever node Ray picks. They all end before the first cell starts, as locally.
- A cell of a GPU engine (``Engine.uses_gpu``) asks for one GPU (``num_gpus=1``): Ray runs one such cell per GPU
  at a time and hands it the GPU through ``CUDA_VISIBLE_DEVICES``. A cell of a host engine (ort-cpu, and any
  ``ort:<Provider>`` whose device the suite cannot tell) asks for one unit of the custom resource
  ``aimatrix_cpu_node``: a node started with ``--resources '{"aimatrix_cpu_node": 1}'`` runs one such cell at a
  time, and a node without it (the head, say) runs none. A cell task asks for no CPU, so it never waits behind
  builds. (A CPU cell and GPU cells may run at once on one node that offers both.)

Artifacts: each node uses its own store (``$AIMATRIX_STORE``). When the run starts, every node reports the
token kept in its store's root; when all tokens are equal the nodes share one store (one directory or one
network file system) and nothing is sent: a node checks the sha256 of the file in place. Otherwise each built
artifact and each FP32 reference is sent through Ray's object store, and a node that lacks it checks the bytes
against the sha256 the builder recorded before installing it under the same key (``ModelStore.install``). The
object store was chosen because it needs nothing of a cluster but Ray itself (racks of different vendors'
machines seldom share a file system), and a shared store, where there is one, costs only the checksums.

Faults: a cell task is never retried by Ray (``max_retries=0``: a cell must not be timed twice unseen); a worker
that dies or a node that leaves turns its cell into a ``failed`` row naming what happened, and cells no node
left can run are failed with that reason instead of waiting forever. ``--resume --retry-failed`` measures them
again. A build task is retried once, elsewhere if its node left (building is deterministic).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bench.executor import BuildOutcome, CellOutcome, CellRequest
from cluster.tasks import Shipped, write_logs
from common import precisions
from common.errors import first_line
from onnx_models.artifacts import Artifact

CPU_SLOT = "aimatrix_cpu_node"
# How long the start-up probes of the nodes may take (each computes its environment: a few seconds).
PROBE_TIMEOUT_S = 120.0
# How often the cell loop looks for cells that no live node can run any more.
LIVENESS_EVERY_S = 5.0
INSTALL = "pip install -e '.[cluster]'"


class ClusterError(Exception):
    """The cluster cannot be used as asked (ray not installed, an address that cannot be reached, no node able to
    run cells): one line naming the problem and the fix."""


def import_ray():
    """The ray module, or ClusterError naming the install command."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray needs the ray package, which is not installed: {INSTALL}") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """ClusterError unless ``host:port`` accepts a TCP connection within ``timeout_s`` (Ray itself retries an
    unreachable address for minutes before it fails)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address must be HOST:PORT (the head's GCS address) or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with `ray start --head` "
            "and pass the address it prints, or leave out --ray-address to start a local one"
        ) from None


def connect(
    address: str | None, num_cpus: int | None = None, object_store_bytes: int | None = None, node_ip: str | None = None
) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one running on this machine), or start a local one (one
    node offering ``aimatrix_cpu_node``, ``num_cpus`` CPUs and ``object_store_bytes`` of object store, at
    ``node_ip``) when it is None. Returns whether a cluster was started. ClusterError for what the user can fix."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    # Ray's own variable names a cluster too; ray.init would join it and refuse the local cluster's resources.
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers' output stays in the cluster's logs: the rows carry every reason.
    common = {"log_to_driver": False, "configure_logging": False}
    if address is None:
        ray.init(
            num_cpus=num_cpus,
            resources={CPU_SLOT: 1},
            object_store_memory=object_store_bytes,
            include_dashboard=False,
            _node_ip_address=node_ip,
            **common,
        )
        return True
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **common)
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot join a Ray cluster at {address}: {first_line(exc)}; start one with `ray start --head`, or leave "
            "out --ray-address to start a local one"
        ) from None
    return False


_REMOTE: dict[Callable, Any] = {}


def _remote(function: Callable, **options: Any):
    """``function`` as a Ray remote function with ``options`` (made once per function: Ray exports each remote
    function to the cluster when it is made)."""
    if function not in _REMOTE:
        _REMOTE[function] = import_ray().remote(function)
    return _REMOTE[function].options(**options)


def _on_node(node_id: str):
    """A scheduling strategy that runs a task on node ``node_id`` and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


class RayExecutor:
    """Runs builds, analyses and cells as tasks on a Ray cluster (see the module docstring for the resources,
    how artifacts travel and what a fault does). A context manager: leaving it disconnects from the cluster (and
    stops the one it started)."""

    def __init__(
        self,
        address: str | None = None,
        say: Callable[[str], None] | None = None,
        num_cpus: int | None = None,
        object_store_bytes: int | None = None,
        node_ip: str | None = None,
    ):
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self._ray = import_ray()
        self._started = connect(address, num_cpus, object_store_bytes, node_ip)
        try:
            self.nodes = self._probe()
        except BaseException:
            self.close()
            raise
        # Every node reading one store token shares one store: nothing needs sending.
        self.ship = len({n["store_id"] for n in self.nodes.values()}) > 1
        self._artifacts: dict[Artifact, Shipped] = {}
        self._availability: dict[str, str | None] = {}
        kind = "each its own store: artifacts travel through Ray's object store" if self.ship else "one shared store"
        self.say(f"ray cluster: {len(self.nodes)} node(s) ({', '.join(self.names())}), {kind}")

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect from the cluster; a cluster this executor started stops with it."""
        if self._ray.is_initialized():
            self._ray.shutdown()

    def names(self) -> list[str]:
        """The names of the nodes found when the run started (``host-<node id prefix>``)."""
        return sorted(n["name"] for n in self.nodes.values())

    def _alive(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive")]

    def _probe(self) -> dict[str, dict[str, Any]]:
        """{node id: what ``describe_node`` says} for every live node, each asked on the node itself; a node that
        does not answer within PROBE_TIMEOUT_S (one that has just died, before the cluster noticed) is left out."""
        from cluster.tasks import describe_node

        answers = self._ask_each([n["NodeID"] for n in self._alive()], describe_node)
        nodes = {info["node_id"]: info for info in answers.values()}
        if not nodes:
            raise ClusterError("no node of the Ray cluster answered; check `ray status` on the head")
        return nodes

    def _ask_each(self, node_ids: list[str], function: Callable, *args: Any) -> dict[str, Any]:
        """{node id: ``function(*args)`` run on that node} for the nodes that answer within PROBE_TIMEOUT_S; the
        others (dead, or leaving) are left out and their tasks cancelled."""
        refs = {
            _remote(function, num_cpus=0, scheduling_strategy=_on_node(node)).remote(*args): node for node in node_ids
        }
        ready, late = self._ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for ref in late:
            self._ray.cancel(ref, force=True)
        answers = {}
        for ref in ready:
            try:
                answers[refs[ref]] = self._ray.get(ref)
            except self._ray.exceptions.RayError:
                continue  # a node that left while answering: it runs nothing of this run
        return answers

    def node_environments(self) -> dict[str, dict[str, Any]]:
        """{node name: its environment} for the nodes found when the run started (the runner writes
        ``nodes/<name>.json``)."""
        return {n["name"]: n["env"] for n in self.nodes.values()}

    def availability(self, engine: str) -> str | None:
        """None when some node that offers ``engine``'s device can run it, else why no node can (no node offers
        the resource, naming the fix; or each node's reason)."""
        if engine not in self._availability:
            self._availability[engine] = self._ask_availability(engine)
        return self._availability[engine]

    def _ask_availability(self, engine: str) -> str | None:
        import engines
        from cluster.tasks import engine_availability

        try:
            need = _need(engines.engine_class(engine))
        except (ImportError, ValueError) as exc:
            return first_line(exc)
        offering = [n for n in self._alive() if n.get("Resources", {}).get(need, 0) >= 1]
        if not offering:
            if need == CPU_SLOT:
                return (
                    f"no node of the Ray cluster offers {CPU_SLOT} (one host cell at a time): start the nodes that "
                    f"measure with ray start --resources '{{\"{CPU_SLOT}\": 1}}'"
                )
            return "no node of the Ray cluster has a GPU"
        reasons = self._ask_each([n["NodeID"] for n in offering], engine_availability, engine).values()
        if not reasons:
            return f"no node of the Ray cluster that offers {need} answered"
        if any(reason is None for reason in reasons):
            return None
        return "; ".join(dict.fromkeys(reasons))

    # -------------------------------------------------------------------------------------------- builds

    def build(self, jobs, export, calib, title: str = "artifacts") -> BuildOutcome:
        """Build every job's artifacts, one task per model on any node with a free CPU; returns what failed or is
        unsupported, as the local executor does, and keeps each built artifact's entry (and bytes, when the
        nodes do not share a store) for the analyses and cells."""
        from tqdm import tqdm

        from cluster.tasks import build_model

        outcome = BuildOutcome()
        pending = {}
        for job in jobs:
            task = _remote(build_model, num_cpus=1, num_returns=1 + len(job.artifacts), max_retries=1)
            info, *blobs = task.remote(job, export, calib, self.ship)
            pending[info] = (job, blobs)
        total = sum(len(job.artifacts) for job, _ in pending.values())
        with tqdm(total=total, desc=title, unit="artifact", file=sys.stderr) as bar:
            for ref, (job, blobs) in self._as_they_end(pending):
                try:
                    info = self._ray.get(ref)
                except self._ray.exceptions.RayError as exc:
                    reason = f"building on the cluster failed: {_lost(exc)}"
                    outcome.failures.update({artifact: reason for artifact in job.artifacts})
                    tqdm.write(f"{job.model}: FAILED: {reason}", file=sys.stderr)
                    bar.update(len(job.artifacts))
                    continue
                outcome.failures.update(info["failures"])
                outcome.unsupported.update(info["unsupported"])
                for artifact, blob in zip(job.artifacts, blobs, strict=True):
                    entry = info["entries"].get(artifact)
                    if entry is not None:
                        data = blob if self.ship else None
                        self._artifacts[artifact] = Shipped(
                            artifact.model, artifact.size, artifact.name, entry["sha256"], entry, info["fields"], data
                        )
                for artifact, reason in info["failures"].items():
                    where = f"{artifact.model} ({artifact.size}) {artifact.name}"
                    tqdm.write(f"{where}: FAILED on {info['node']}: {reason}", file=sys.stderr)
                bar.update(len(job.artifacts))
        return outcome

    def _as_they_end(self, pending: dict) -> Iterator[tuple[Any, Any]]:
        """(ref, its value in ``pending``) for each ref of ``pending`` as its task ends, emptying ``pending``. An
        interrupt cancels every task still running before it propagates."""
        try:
            while pending:
                done, _ = self._ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    yield ref, pending.pop(ref)
        finally:
            for ref in pending:
                self._ray.cancel(ref, force=True)

    # ------------------------------------------------------------------------------------------ analyses

    def facts(
        self, batches: dict[str, list[int]], size: str, skip: Iterable[str], accuracy_samples: int | None
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """FLOPs/params/bytes and the FP32 references for each (model, batch), one task per model; as the local
        executor's, except that ``reference`` is a ``Shipped`` file for the cells' nodes rather than a path."""
        from tqdm import tqdm

        from cluster.tasks import model_facts

        skip = set(skip)
        facts: dict[tuple[str, int], dict[str, Any]] = {}
        pending = {}
        for model, sizes in batches.items():
            if model in skip:
                continue
            fp32 = self._artifacts.get(Artifact(model, size, precisions.BASE))
            if fp32 is None:
                reason = f"{model} has no FP32 artifact from this run's builds"
                facts.update({(model, b): {"flops_error": reason, "reference_error": reason} for b in sizes})
                continue
            task = _remote(model_facts, num_cpus=1, num_returns=1 + len(sizes), max_retries=1)
            first, *blobs = task.remote(model, size, list(sizes), accuracy_samples, fp32, self.ship)
            pending[first] = (model, list(sizes), blobs)
        with tqdm(total=len(pending), desc="analysis", unit="model", file=sys.stderr) as bar:
            for ref, (model, sizes, blobs) in self._as_they_end(pending):
                try:
                    by_batch = self._ray.get(ref)
                except self._ray.exceptions.RayError as exc:
                    reason = f"on the cluster: {_lost(exc)}"
                    facts.update({(model, b): {"flops_error": reason, "reference_error": reason} for b in sizes})
                    bar.update()
                    continue
                for batch, blob in zip(sizes, blobs, strict=True):
                    entry = dict(by_batch[batch])
                    reference = entry.pop("reference", None)
                    if reference:
                        data = blob if self.ship else None
                        entry["reference"] = Shipped(model, size, reference["name"], reference["sha256"], data=data)
                    facts[(model, batch)] = entry
                bar.update()
        return facts

    def roofs(self, engine: str, threads: int | None) -> str | None:
        """Roofs are a machine's: the cells ran on the cluster's nodes, so none are measured on the driver's."""
        return "the cells ran on Ray cluster nodes: measure each node's roofs there with `python suite.py peak`"

    # --------------------------------------------------------------------------------------------- cells

    def measure_all(self, requests: Iterable[CellRequest], config) -> Iterator[CellOutcome]:
        """Start every requested cell as a task holding its device (one GPU, or its node's ``aimatrix_cpu_node``)
        and yield each outcome the moment its task ends, in whatever order they end. With ``config.rounds`` above
        1 the closed-loop cells that are compared with each other (``bench.executor.interleave_groups``) and hold
        the same device run as one task, on one node, in interleaved rounds (``measure_rounds``), and end
        together. A task lost to a dead worker or node, and a cell no live node can run any more, come back
        failed with the reason. Leaving early (an interrupt) cancels the cells still running."""
        import engines
        from bench.executor import in_rounds, interleave_groups
        from cluster.tasks import measure_cell, measure_group

        pending: dict[Any, tuple[list[CellRequest], str]] = {}
        for group in interleave_groups(requests, config.rounds):
            by_need: dict[str, list[tuple[CellRequest, Shipped]]] = {}
            for request in group:
                artifact = self._artifacts.get(request.cell.artifact)
                if artifact is None:
                    cell = request.cell
                    yield CellOutcome(request, None, f"{cell.model} {cell.artifact.name} was not built in this run")
                    continue
                by_need.setdefault(_need(engines.engine_class(request.cell.engine)), []).append((request, artifact))
            for need, members in by_need.items():
                device = {"num_gpus": 1} if need == "GPU" else {"resources": {CPU_SLOT: 1}}
                if not in_rounds(members[0][0].cell, config.rounds):
                    (request, artifact), *_ = members
                    task = _remote(measure_cell, num_cpus=0, max_retries=0, **device)
                    ref = task.remote(request.cell, config, artifact, request.reference, request.log_dir is not None)
                else:
                    task = _remote(measure_group, num_cpus=0, max_retries=0, **device)
                    cells = [(request.cell, artifact, request.reference) for request, artifact in members]
                    ref = task.remote(cells, config)
                pending[ref] = ([request for request, _ in members], need)
        checked = time.monotonic()
        try:
            while pending:
                done, _ = self._ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    group, _ = pending.pop(ref)
                    yield from self._outcomes(ref, group)
                if time.monotonic() - checked > LIVENESS_EVERY_S:
                    checked = time.monotonic()
                    yield from self._orphans(pending)
        finally:
            for ref in pending:
                self._ray.cancel(ref, force=True)

    def _outcomes(self, ref, group: list[CellRequest]) -> Iterator[CellOutcome]:
        """The CellOutcomes of the finished task ``ref`` (one cell, or a group measured in rounds)."""
        try:
            results = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            # A node that left is named in Ray's message by its id: the row names it as the others do.
            found = re.search(r"node ID: ([0-9a-f]+)", str(exc))
            node = self.nodes.get(found.group(1), {}).get("name") if found else None
            for request in group:
                yield CellOutcome(request, None, _lost(exc), {"node": node} if node else {})
            return
        for request, result in zip(group, results if isinstance(results, list) else [results], strict=True):
            if result.get("logs") and request.log_dir is not None:
                write_logs(result["logs"], request.log_dir)
            yield CellOutcome(request, result["measured"], result["error"], result["where"])

    def _orphans(self, pending: dict) -> Iterator[CellOutcome]:
        """Fail (and cancel) the pending cells whose device no live node offers any more: Ray would keep them
        waiting for a node that may never come back."""
        offered = {name for n in self._alive() for name, amount in n.get("Resources", {}).items() if amount >= 1}
        for ref, (group, need) in list(pending.items()):
            if need not in offered:
                del pending[ref]
                self._ray.cancel(ref, force=True)
                reason = f"no live node of the Ray cluster offers {need} any more (a node left); not measured"
                for request in group:
                    yield CellOutcome(request, None, reason)


def _need(engine_cls) -> str:
    """The resource one cell of ``engine_cls`` holds: a GPU for CUDA engines, else its node's CPU slot."""
    return "GPU" if getattr(engine_cls, "uses_gpu", False) else CPU_SLOT


def _lost(exc: BaseException) -> str:
    """The row's reason for a task that Ray could not finish (its worker died, its node left, ...)."""
    kind = type(exc).__name__
    what = {
        "WorkerCrashedError": "the Ray worker running it died",
        "NodeDiedError": "the node running it left the cluster",
        "TaskCancelledError": "it was cancelled",
        "OutOfMemoryError": "Ray killed its worker for lack of memory",
    }.get(kind, "Ray could not run it")
    return f"{what} ({kind}: {first_line(exc, 200)})"
