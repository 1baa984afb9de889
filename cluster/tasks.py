"""The work a Ray cluster's nodes do for ``cluster.executor.RayExecutor``: describing the node, building a model's
artifacts, counting its FLOPs and computing its FP32 references, and measuring one cell. Each runs as a Ray task
in a Ray worker process and, inside it, does the real work the way the local executor does, in a child process
per piece (``bench.executor.LocalExecutor``), so a crash, a hang or an out-of-memory becomes a reason, and each
cell's peak memory is its own process's.

Files reach a node as ``Shipped`` descriptors: the sha256 the builder recorded, and the bytes in Ray's object
store when the nodes do not share one artifact store. ``local_path`` puts such a file into this node's store
(verified by sha256 before it is written) unless the store already holds those exact bytes.

This module imports ray only inside the functions that need it: the driver imports it to name the tasks.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cell import Cell
from bench.plan import ArtifactJob
from common.hashing import sha256_file
from onnx_models.store import ArtifactError, ModelStore

STORE_ID_FILE = ".store-id"


@dataclass(frozen=True)
class Shipped:
    """A store file that a node may need: where it belongs (``model``, ``size``, ``name``: an artifact name such as
    ``int8`` or a cache file name), the ``sha256`` its maker recorded, for an artifact its manifest ``entry`` and
    the model's manifest ``fields`` (None for a cache file), and ``data``: the ObjectRef of its bytes in Ray's
    object store, or None when every node shares the maker's store and nothing is sent."""

    model: str
    size: str
    name: str
    sha256: str
    entry: dict[str, Any] | None = None
    fields: dict[str, Any] | None = None
    data: Any = None


def local_path(shipped: Shipped) -> Path:
    """The path of ``shipped`` in this node's store, with the bytes its maker recorded: the store's own file when
    it already holds them (a store shared with the maker, or an earlier run), else the sent bytes, checked
    against the sha256 and installed. Raises ArtifactError when neither is possible."""
    store = ModelStore(shipped.model, shipped.size)
    if shipped.entry is not None:
        if store.holds(shipped.name, shipped.sha256):
            return store.path(shipped.name)
        return store.install(shipped.name, _fetch(shipped, store), shipped.entry, shipped.fields or {})
    path = store.verified_cache(shipped.name)
    if path is not None and sha256_file(path) == shipped.sha256:
        return path
    return store.install_cache(shipped.name, _fetch(shipped, store), shipped.sha256)


def _fetch(shipped: Shipped, store: ModelStore) -> bytes:
    """The bytes of ``shipped`` from Ray's object store (pulled from whichever node holds them)."""
    if shipped.data is None:
        raise ArtifactError(
            f"{shipped.model} ({shipped.size}) {shipped.name} is not in this node's store ({store.dir}) and was not "
            "sent: the nodes were found to share one store when the run started"
        )
    import ray

    return ray.get(shipped.data)


def threads_as_on_the_node() -> None:
    """Undo what Ray changes in a worker's environment that the children building and measuring would inherit:
    Ray sets ``OMP_NUM_THREADS`` to the task's CPU count (1 for these tasks) where the node did not set it. A
    local run leaves it unset; with it, OpenMP-threaded exporters ran on one thread and the same ResNet-50 export
    came out in other bytes than the local executor's (same key, other sha256). The node's own value (the
    raylet's environment, this worker's parent) is kept."""
    try:
        raylet_env = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:
        return  # not Linux, or not readable: leave Ray's setting
    if not any(item.startswith(b"OMP_NUM_THREADS=") for item in raylet_env):
        os.environ.pop("OMP_NUM_THREADS", None)


def store_id() -> str:
    """A random token kept in this node's store root (``.store-id``, made on first use): nodes that read the same
    token share one store (one directory, or one network file system), so files need not be sent between them."""
    from common.paths import store_root

    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / STORE_ID_FILE
    try:
        # Exclusive create: two nodes of one shared store starting at once keep one token.
        with open(path, "x") as handle:
            handle.write(secrets.token_hex(16))
    except FileExistsError:
        pass
    return path.read_text().strip()


def node_name() -> str:
    """This node's name in rows and ``nodes/``: ``<host name>-<first 8 hex digits of the Ray node id>`` (several
    nodes may run on one host)."""
    import ray

    return f"{socket.gethostname()}-{ray.get_runtime_context().get_node_id()[:8]}"


def describe_node() -> dict[str, Any]:
    """This node: its Ray node id, name, host, store token and environment (``bench.env.environment``, without the
    run's settings, which the driver adds)."""
    threads_as_on_the_node()
    import ray

    from bench.env import environment

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "name": node_name(),
        "host": socket.gethostname(),
        "store_id": store_id(),
        "env": environment({}),
    }


def engine_availability(engine: str) -> str | None:
    """None when ``engine`` can run on this node, else the reason it cannot."""
    import engines

    return engines.availability(engine)


def build_model(job: ArtifactJob, export, calib, ship: bool) -> tuple:
    """Build (or reuse from this node's store) the artifacts of one model, one child process each, in the local
    executor's order. Returns ``(info, bytes of artifact 1, bytes of artifact 2, ...)`` in ``job.artifacts``'
    order: ``info`` holds the failures and unsupported conversions (as BuildOutcome's), each artifact's manifest
    entry (None where it failed), the model's manifest fields and the node's name; the bytes are sent only with
    ``ship`` (None otherwise, and for failed artifacts)."""
    threads_as_on_the_node()
    from bench.executor import LocalExecutor

    outcome = LocalExecutor(1, say=lambda line: None).build([job], export, calib)
    size = job.artifacts[0].size
    store = ModelStore(job.model, size)
    manifest = store.manifest()
    entries, blobs = {}, []
    for artifact in job.artifacts:
        broken = outcome.problem(artifact) is not None
        entry = None if broken else manifest.get("artifacts", {}).get(artifact.name)
        # Read through the sha256 check: bytes that no longer match their entry are never sent.
        blobs.append(store.verified_path(artifact.name).read_bytes() if entry and ship else None)
        entries[artifact] = entry
    info = {
        "failures": outcome.failures,
        "unsupported": outcome.unsupported,
        "entries": entries,
        "fields": {k: v for k, v in manifest.items() if k not in ("artifacts", "caches")},
        "node": node_name(),
    }
    return (info, *blobs)


def model_facts(model: str, size: str, batches: list[int], accuracy_samples: int | None, fp32: Shipped, ship: bool):
    """FLOPs/params/bytes and the FP32 reference outputs of ``model`` at each batch size, computed on this node
    from ``fp32`` (installed here first if need be). Returns ``(facts by batch, reference bytes per batch...)``;
    a batch's ``reference`` is ``{"name", "sha256"}`` of its cache file, its bytes sent only with ``ship``."""
    threads_as_on_the_node()
    from bench.executor import LocalExecutor

    local_path(fp32)
    facts = LocalExecutor(1).facts({model: batches}, size, (), accuracy_samples)
    out, blobs = {}, []
    for batch in batches:
        entry = dict(facts.get((model, batch), {}))
        reference = entry.pop("reference", None)
        if reference:
            path = Path(reference)
            data = path.read_bytes()
            entry["reference"] = {"name": path.name, "sha256": _sha(data)}
            blobs.append(data if ship else None)
        else:
            blobs.append(None)
        out[batch] = entry
    return (out, *blobs)


def measure_cell(cell: Cell, config, artifact: Shipped, reference: Shipped | None, loadgen: bool) -> dict[str, Any]:
    """Measure one cell on this node, holding its device (the driver asked Ray for one GPU or for the node's CPU
    slot): the artifact and reference are put into this node's store, then the cell runs in a child process as
    it does locally. Returns ``{"measured", "error", "where", "logs"}``: the measured columns or the reason it
    failed, the ``node`` and ``device`` columns, and a LoadGen scenario's log files ({relative path: bytes})."""
    threads_as_on_the_node()
    import ray

    from bench.executor import LocalExecutor
    from common.errors import first_line

    gpus = ray.get_gpu_ids()
    # Ray hands the task its GPU through CUDA_VISIBLE_DEVICES (the engine, in the child, sees it as device 0);
    # the row names the GPU by its index on the node.
    where = {"node": node_name(), "device": f"cuda:{gpus[0]}" if gpus else "cpu"}
    try:
        local_path(artifact)
        reference_path = str(local_path(reference)) if reference is not None else None
    except (ArtifactError, OSError) as exc:
        error = f"the artifact did not reach {where['node']}: {first_line(exc)}"
        return {"measured": None, "error": error, "where": where}
    log_dir = Path(tempfile.mkdtemp(prefix="aimatrix-loadgen-")) if loadgen else None
    try:
        measured, error = LocalExecutor(1).measure(cell, config, reference_path, log_dir)
        logs = {}
        if log_dir is not None:
            logs = {str(p.relative_to(log_dir)): p.read_bytes() for p in log_dir.rglob("*") if p.is_file()}
    finally:
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)
    if measured is not None:
        measured["device"] = where["device"]
    return {"measured": measured, "error": error, "where": where, "logs": logs}


def measure_group(cells: list[tuple[Cell, Shipped, Shipped | None]], config) -> list[dict[str, Any]]:
    """Measure the closed-loop cells of one model, size, batch size and concurrency on this node in interleaved
    rounds (``bench.executor.measure_rounds``), holding one device for all of them: each (cell, artifact,
    reference) is put into this node's store first. Returns, per cell in order, what ``measure_cell`` returns
    (without logs: the closed loop writes none)."""
    threads_as_on_the_node()
    import ray

    from bench.executor import CellRequest, measure_rounds
    from common.errors import first_line

    gpus = ray.get_gpu_ids()
    where = {"node": node_name(), "device": f"cuda:{gpus[0]}" if gpus else "cpu"}
    results: list[dict[str, Any] | None] = [None] * len(cells)
    ready: list[tuple[int, CellRequest]] = []
    for index, (cell, artifact, reference) in enumerate(cells):
        try:
            local_path(artifact)
            reference_path = str(local_path(reference)) if reference is not None else None
        except (ArtifactError, OSError) as exc:
            error = f"the artifact did not reach {where['node']}: {first_line(exc)}"
            results[index] = {"measured": None, "error": error, "where": where}
            continue
        ready.append((index, CellRequest(cell, reference_path)))
    measured = measure_rounds([request for _, request in ready], config) if ready else []
    for (index, _), (_, columns, error) in zip(ready, measured, strict=True):
        if columns is not None:
            columns["device"] = where["device"]
        results[index] = {"measured": columns, "error": error, "where": where}
    return [result for result in results if result is not None]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_logs(logs: dict[str, bytes], log_dir: Path) -> None:
    """Write a LoadGen cell's log files, sent back from its node, under ``log_dir`` (names must stay inside it)."""
    root = log_dir.resolve()
    for name, data in logs.items():
        path = (log_dir / name).resolve()
        if root not in path.parents:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
