"""The GPU check for a borrowed H100: one command, a hard time budget, one small table.

Run on the borrowed machine, in the repository root, after ``pack.py`` here (README: "A check for a borrowed
H100"); ``OUT`` is the folder whose files come back:

    PYTHONUNBUFFERED=1 python3 benchmarks/device_check/run.py --out "$OUT" [--budget-s 480] [--models M,...]

In order, each step a child process stopped at the budget's end (what finished is kept and written):

1. install: a virtual environment under /tmp that links every package of the machine's Python except its
   CPU onnxruntime, with the packed onnxruntime-gpu (``.device_check/``, sha256 checked) and the carried
   wheels unpacked into it; the machine's pip-installed CUDA and cuDNN libraries on LD_LIBRARY_PATH, where
   the CUDA provider finds them by name;
2. probe: which onnxruntime is imported, that it is the only one installed and has the CUDA provider, and
   ``suite.py engines``;
3. gpu: ``nvidia-smi``, then a Conv and a MatMul on the CUDA provider with CPU fall-back turned off, compared
   with numpy: the sm_90-only provider either runs, or the check stops here within seconds;
4. per model (ResNet-50; ``--models resnet50,ssd`` adds SSD while the budget lasts; BERT is exported from
   TensorFlow, which the machine lacks), the suite's own commands: ``suite.py
   calibrate`` (export with torch, FP16, INT8 Q/DQ calibrated on the CPU), ``suite.py run`` on ``ort-cuda`` at
   FP32 (TF32), FP16 and INT8, then FP32 with ``--no-tf32``, then all three with ``--include-copies``, batch 1,
   accuracy against ONNX Runtime CPU FP32 in every row; the provider of every node (an ONNX Runtime profile
   of the suite's engine); the bare loop of ``benchmarks/gpu_bare_loop.py``;
5. ``OUT``: table.md (one line per cell, with the bare loop's p50 and the nodes on the GPU beside the suite's
   numbers), results.jsonl (every row), bare_loop.txt, providers.jsonl, steps.json (each step's seconds),
   check.log (everything printed).

``--dry-run`` (what ``dry_run.sh`` runs on a machine without a GPU) builds the artifacts before the GPU
check, so that everything up to the first GPU call is exercised; it then stops with exit status 3 and the line
"no GPU". Exit status: 0 all ran, 1 a step failed, 2 the budget ran out first, 3 no GPU, 4 the CUDA provider
did not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import site
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE_PROVIDERS = str(Path(__file__).with_name("node_providers.py"))
NO_GPU, PROVIDER_FAILED, OUT_OF_TIME, STEP_FAILED = 3, 4, 2, 1
# Seconds kept back from the budget for writing the table after the last step is stopped.
RESERVE_S = 15
# Below these many seconds left, a model is not started: its build and first run would not finish.
MODEL_MIN_S = {"resnet50": 120, "ssd": 240}
# Models of the full check (benchmarks/gpu_check.sh) that this one cannot run, and why.
NOT_HERE = {
    name: "exported from TensorFlow, which the borrowed machine lacks, and its ONNX files (440 MB at FP32) "
    "cannot travel"
    for name in ("bert", "bert_base")
}
# Each run's bare-loop table, kept beside its results.jsonl, all of them joined in OUT.
BARE_LOOP = "bare_loop.txt"
RUN_ARGS = ["--engines", "ort-cuda", "--size", "full", "--batch-sizes", "1", "--warmup-s", "1", "--duration-s", "2"]


class Check:
    """The budget, the log and the children's environment of one check."""

    def __init__(self, out: Path, budget_s: float, work: Path):
        self.out, self.work = out, work
        self.deadline = time.monotonic() + budget_s
        self.log = (out / "check.log").open("a")
        self.steps: list[dict] = []
        # The store and the cache (roofs, references) under the work folder: nothing of a person's own is used.
        self.env = dict(
            os.environ, PYTHONUNBUFFERED="1", AIMATRIX_STORE=str(work / "store"), AIMATRIX_CACHE=str(work / "cache")
        )
        self.out_of_time = False
        self.failed = False
        # The Python that runs the steps: the work folder's environment once install() made it.
        self.python = sys.executable

    def say(self, line: str) -> None:
        """Print ``line`` and keep it in check.log."""
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        """Seconds left before the table must be written."""
        return self.deadline - time.monotonic() - RESERVE_S

    def step(self, name: str, command: list[str], cap_s: float | None = None, output: Path | None = None) -> int:
        """Run ``command`` as step ``name`` (its output printed, logged and, with ``output``, kept there), stopped
        with its process group at the budget's end or after ``cap_s``; returns its exit status (124: stopped)."""
        limit = min(self.left(), cap_s or float("inf"))
        if limit < 5:
            self.say(f"== {name}: skipped, {max(self.left(), 0):.0f} s of the budget left")
            self.out_of_time = True
            self.steps.append({"step": name, "status": "skipped", "seconds": 0})
            return 124
        # A program given with -c is named by its first line, not printed whole.
        shown = [c if not c.startswith("\n") else "<program>" for c in command]
        self.say(f"== {name} (at most {limit:.0f} s): {' '.join(shown)}")
        started = time.monotonic()
        # CPU seconds of the step's processes (once reaped): what the estimate for another machine scales from,
        # where wall time here also holds waiting for cores that other work took.
        cpu_before = _children_cpu_s()
        kept = output.open("a") if output else None
        # A process group of its own, so that a stop also ends the suite's cell processes.
        child = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            for line in _lines(child, started + limit):
                self.say(line)
                if kept:
                    kept.write(line + "\n")
        except TimeoutError:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            status = 124
        else:
            status = child.wait()
        finally:
            if kept:
                kept.close()
        seconds = time.monotonic() - started
        cpu = _children_cpu_s() - cpu_before
        self.steps.append({"step": name, "status": status, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1)})
        if status == 124 and limit < (cap_s or float("inf")):
            self.out_of_time = True
            self.say(f"== {name}: stopped after {seconds:.0f} s, at the end of the budget")
        elif status == 124:
            # Its own cap, not the budget: a step that hangs is a failure, and the check goes on.
            self.failed = True
            self.say(f"== {name}: stopped after {seconds:.0f} s, its own limit")
        else:
            self.failed |= status != 0
            self.say(f"== {name}: exit {status} after {seconds:.1f} s")
        return status


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _lines(child: subprocess.Popen, deadline: float):
    """The child's output lines as they come; TimeoutError at ``deadline`` (monotonic). Reads whatever bytes
    are there rather than whole lines: a progress bar redraws with carriage returns and no newline, and a
    readline() would block past the deadline while a cell hangs mid-bar."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if not selector.select(min(left, 1.0)):
            continue
        chunk = os.read(child.stdout.fileno(), 1 << 16)
        if not chunk:
            if pending:
                yield pending.decode(errors="replace").split("\r")[-1]
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            # tqdm's bars redraw with carriage returns: keep the last state of each line.
            yield line.decode(errors="replace").split("\r")[-1]


def nvidia_lib_dirs() -> list[str]:
    """The library folders of pip's CUDA and cuDNN packages in this Python (nvidia/cu13/lib, nvidia/cudnn/lib,
    ...), which nothing puts on the loader's path."""
    found = []
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        for lib in sorted(Path(root).glob("nvidia/*/lib")):
            if any(lib.glob("*.so*")):
                found.append(str(lib))
    return found


def environment(check: Check) -> Path:
    """A virtual environment in the work folder that sees this Python's packages except its onnxruntime (the
    CPU build), each linked in; returns its site-packages, where the packed onnxruntime-gpu goes.

    Putting onnxruntime-gpu ahead on PYTHONPATH is not enough: both distributions would then be installed in
    the metadata's eyes, which the suite refuses (the two builds overwrite each other where they share a
    folder), and ONNX Runtime's preload_dlls looks for pip's CUDA libraries beside its own folder."""
    venv = check.work / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    check.python = str(venv / "bin" / "python")
    target = Path(subprocess.run(
        [check.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())  # fmt: skip
    roots = [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    for root in roots:
        for entry in root.iterdir():
            link = target / entry.name
            # First on sys.path wins, as for the import system; the CPU onnxruntime is left out.
            if entry.name.lower().startswith("onnxruntime") or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry)
    return target


def install(check: Check, carry: Path) -> bool:
    """Unpack the packed onnxruntime-gpu and the carried wheels into the work folder's environment, set the
    children's PYTHONPATH (the repository) and LD_LIBRARY_PATH; False (said why) when something is missing or
    does not match."""
    started = time.monotonic()
    manifest_path = carry / "manifest.json"
    if not manifest_path.is_file():
        check.say(f"install: {manifest_path} is missing: run benchmarks/device_check/pack.py first and carry {carry}")
        return False
    manifest = json.loads(manifest_path.read_text())
    archive = carry / manifest["archive"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest() if archive.is_file() else "missing"
    if digest != manifest["archive_sha256"]:
        check.say(f"install: {archive} is {digest[:16]}, not the packed {manifest['archive_sha256'][:16]}")
        return False
    try:
        site_dir = environment(check)
    except (OSError, subprocess.CalledProcessError) as exc:
        check.say(f"install: cannot make the environment in {check.work}: {exc}")
        return False
    with tarfile.open(archive) as tar:
        # The "tar" filter (no absolute paths or links out) where this Python has it (3.12 does; 3.11.2 not).
        tar.extractall(site_dir, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    wheels = sorted(str(w) for w in carry.glob("*.whl"))
    if wheels:
        # The carried wheels are pure Python (onnxruntime's is packed above): no index, no dependencies.
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*pip, "--upgrade", "--target", str(site_dir), *wheels], check=True)
    check.env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), check.env.get("PYTHONPATH", "")] if p)
    libs = [*nvidia_lib_dirs(), check.env.get("LD_LIBRARY_PATH", "")]
    check.env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    seconds = time.monotonic() - started
    check.steps.append({"step": "install", "status": 0, "seconds": round(seconds, 1)})
    check.say(
        f"install: {manifest['wheel']} cut to {manifest['arch']} and {len(wheels)} wheel(s) into {site_dir} "
        f"in {seconds:.1f} s; CUDA libraries from {', '.join(libs[:-1]) or 'nowhere (none found)'}"
    )
    return True


PROBE = """
import sys, onnxruntime as ort
print("python", sys.version.split()[0], "onnxruntime", ort.__version__, "from", ort.__file__)
print("providers in this build:", ", ".join(ort.get_available_providers()))
from importlib.metadata import distributions
names = [(d.metadata["Name"] or "", d.version) for d in distributions()]
seen = sorted(f"{name} {version}" for name, version in names if name.startswith("onnxruntime"))
print("onnxruntime distributions seen:", ", ".join(seen))
sys.exit(0 if "CUDAExecutionProvider" in ort.get_available_providers() and len(seen) == 1 else 1)
"""

# A Conv (cuDNN) and a MatMul (cuBLAS) on the CUDA provider alone: CPU fall-back is turned off, so a kernel
# that the cut provider cannot launch is an error here, not a silent CPU run.
GPU_PROBE = """
import sys, numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
m = np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32)
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
     helper.make_node("Reshape", ["c", "shape"], ["r"]), helper.make_node("MatMul", ["r", "m"], ["y"])],
    "probe", [x], [y],
    [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(m, "m"),
     onnx.numpy_helper.from_array(np.array([1, 256], np.int64), "shape")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
options = ort.SessionOptions()
options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
feed = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
got = session.run(None, {"x": feed})[0]
cpu = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]
# Relative to the largest output: the CUDA provider runs both in TF32 by default (10-bit mantissa).
error = float(np.abs(got - cpu).max() / np.abs(cpu).max())
print(f"CUDA provider ran a Conv and a MatMul: max |GPU - CPU| / max |CPU| = {error:.2e}")
sys.exit(0 if error < 1e-2 else 1)
"""


def main(argv: list[str] | None = None) -> int:
    """Command line; the exit status says how far the check came (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the table, rows and log are written")
    parser.add_argument("--budget-s", type=float, default=480, help="seconds for the whole check (default 480)")
    parser.add_argument("--models", default="resnet50", help="in order (resnet50, ssd); each started while time lasts")
    parser.add_argument("--carry", type=Path, default=REPO / ".device_check", help="what pack.py wrote")
    parser.add_argument("--work", type=Path, default=Path("/tmp/aimatrix-device"), help="install and store folder")
    parser.add_argument("--dry-run", action="store_true", help="build the artifacts before the GPU check (no GPU here)")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        if name in NOT_HERE:
            parser.error(f"--models: {name} is {NOT_HERE[name]}")
    unknown = sorted(set(args.models.split(",")) - set(MODEL_MIN_S))
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} not in this check (it knows {', '.join(MODEL_MIN_S)})")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.budget_s, args.work)
    status = _check(check, args)
    _write_outputs(check, args)
    check.say(f"== device check: exit {status}; {args.budget_s - check.left() - RESERVE_S:.0f} s of {args.budget_s:g}")
    return status


def _check(check: Check, args: argparse.Namespace) -> int:
    """The steps of the module docstring; returns the exit status."""
    models = args.models.split(",")
    if not install(check, args.carry):
        return STEP_FAILED
    py = check.python
    if check.step("probe", [py, "-c", PROBE], cap_s=60):
        check.say("probe: the packed onnxruntime is not the one imported, or has no CUDA provider")
        return STEP_FAILED
    check.step("engines", [py, "suite.py", "engines"], cap_s=60)
    if args.dry_run:
        # No GPU here: build what needs none, so that everything before the first GPU call is exercised.
        for model in models:
            check.step(f"build {model}", [py, "suite.py", "calibrate", "--models", model, "--size", "full",
                                          "--engines", "ort-cuda"])  # fmt: skip
            # The suite's run path (reference outputs, FLOPs, rows, summary) without polars or LoadGen, on the
            # CPU engine: the same code the GPU cells go through, short of the GPU.
            stand_in = check.work / "runs" / model / "cpu-dry-run"
            check.step(f"{model} cpu stand-in", [py, "suite.py", "run", "--models", model, *RUN_ARGS[2:],
                                                 "--engines", "ort-cpu", "--precisions", "fp32",
                                                 "--out", str(stand_in)])  # fmt: skip
            check.step(f"{model} providers (cpu stand-in)", [py, NODE_PROVIDERS, str(stand_in / "results.jsonl"),
                                                             str(args.out / "providers.jsonl"), "--profiles",
                                                             str(check.work / "profiles")], cap_s=90)  # fmt: skip
    if check.step("nvidia-smi", ["nvidia-smi", "-L"], cap_s=30) if _has("nvidia-smi") else 127:
        check.say("no GPU: nvidia-smi is missing or lists no GPU; nothing past this point can run here")
        return NO_GPU
    if check.step("CUDA provider", [py, "-c", GPU_PROBE], cap_s=90):
        check.say("the CUDA provider (kernels for the packed architecture only) did not run: see the lines above")
        return PROVIDER_FAILED
    for model in models:
        if check.left() < MODEL_MIN_S[model]:
            check.say(f"== {model}: not started, {check.left():.0f} s left (it needs about {MODEL_MIN_S[model]} s)")
            check.out_of_time = True
            continue
        runs = check.work / "runs" / model
        if not args.dry_run and check.step(
            f"build {model}",
            [py, "suite.py", "calibrate", "--models", model, "--size", "full", "--engines", "ort-cuda"],
        ):
            continue
        suite_run = [py, "suite.py", "run", "--models", model, *RUN_ARGS]
        check.step(f"{model} tf32", [*suite_run, "--precisions", "fp32,fp16,int8", "--out", str(runs / "tf32")])
        check.step(
            f"{model} providers", [py, NODE_PROVIDERS, str(runs / "tf32" / "results.jsonl"),
                                   str(args.out / "providers.jsonl"), "--profiles", str(check.work / "profiles")],
            cap_s=90,
        )  # fmt: skip
        check.step(
            f"{model} bare loop", [py, "benchmarks/gpu_bare_loop.py", str(runs / "tf32"), "--seconds", "2"],
            cap_s=90, output=runs / "tf32" / BARE_LOOP,
        )  # fmt: skip
        check.step(f"{model} fp32", [*suite_run, "--precisions", "fp32", "--no-tf32", "--out", str(runs / "fp32")])
        check.step(
            f"{model} bare loop fp32", [py, "benchmarks/gpu_bare_loop.py", str(runs / "fp32"), "--seconds", "2"],
            cap_s=60, output=runs / "fp32" / BARE_LOOP,
        )  # fmt: skip
        check.step(
            f"{model} copies",
            [*suite_run, "--precisions", "fp32,fp16,int8", "--include-copies", "--out", str(runs / "copies")],
        )
    if check.out_of_time:
        return OUT_OF_TIME
    return STEP_FAILED if check.failed else 0


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def _write_outputs(check: Check, args: argparse.Namespace) -> None:
    """results.jsonl (every row, with the variant it came from), bare_loop.txt (every run's), table.md and
    steps.json into ``--out``."""
    rows, bare, texts = [], {}, []
    for results in sorted((check.work / "runs").glob("*/*/results.jsonl")):
        variant = results.parent.name
        for line in results.read_text().splitlines():
            rows.append({"check_variant": variant, **json.loads(line)})
        loop = results.parent / BARE_LOOP
        if loop.is_file():
            texts.append(f"== {results.parent.parent.name} {variant}\n{loop.read_text()}")
            bare.update({(*key, variant): p50 for key, p50 in bare_p50s(loop.read_text()).items()})
    with (args.out / "results.jsonl").open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    if texts:
        (args.out / BARE_LOOP).write_text("\n".join(texts))
    providers = {}
    if (args.out / "providers.jsonl").is_file():
        for line in (args.out / "providers.jsonl").read_text().splitlines():
            entry = json.loads(line)
            providers[(entry["model"], entry["precision"], entry["engine"])] = entry
    (args.out / "steps.json").write_text(json.dumps(check.steps, indent=1) + "\n")
    (args.out / "table.md").write_text(table(rows, check.steps, bare, providers))


def bare_p50s(text: str) -> dict[tuple[str, str], float]:
    """(model, precision) -> the bare loop's p50 (ms), from ``gpu_bare_loop.py``'s table: its columns are model,
    precision, engine, batch, status, the suite's p50, the bare loop's p50 and their ratio."""
    found = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 8 and cells[4] == "ok":
            try:
                found[(cells[0], cells[1])] = float(cells[6])
            except ValueError:
                continue
    return found


def table(rows: list[dict], steps: list[dict], bare: dict | None = None, providers: dict | None = None) -> str:
    """One Markdown line per cell: variant, precision, FP32 math, copies, p50 and the bare loop's, throughput,
    accuracy, nodes on the GPU, status; then the steps' seconds."""
    bare, providers = bare or {}, providers or {}
    lines = [
        "| model | variant | prec | fp32 math | copies timed | p50 ms | bare p50 ms | p99 ms | samples/s | accuracy "
        "| cosine | nodes on GPU | status |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        settings = json.loads(row.get("engine_settings") or "{}")
        accuracy = f"{row.get('accuracy_metric') or ''} {_num(row.get('accuracy_value'))}".strip()
        status = row["status"] + (f": {row['error'][:80]}" if row.get("error") else "")
        placed = providers.get((row["model"], row["precision"], row["engine"]))
        on_gpu = f"{placed['by_provider'].get('CUDAExecutionProvider', 0)}/{placed['nodes']}" if placed else "-"
        lines.append(
            f"| {row['model']} | {row['check_variant']} | {row['precision']} | {row.get('fp32_math') or '-'} "
            f"| {'yes' if settings.get('include_copies') else 'no'} | {_num(row.get('latency_ms_p50'))} "
            f"| {_num(bare.get((row['model'], row['precision'], row['check_variant'])))} "
            f"| {_num(row.get('latency_ms_p99'))} | {_num(row.get('throughput_samples_per_s'))} | {accuracy or '-'} "
            f"| {_num(row.get('accuracy_cosine'))} | {on_gpu} | {status} |"
        )
    if not rows:
        lines.append("| (no cell ran) |" + " |" * 12)
    lines += ["", "| step | status | seconds | CPU seconds |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s.get('cpu_s', '-')} |" for s in steps]
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
