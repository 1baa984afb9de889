"""The borrowed-H100 check's pieces that need no GPU and no download (benchmarks/device_check): cutting a
fatbin to one architecture, the size check, and the device script's command line and table."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"device_check_{name}", ROOT / "benchmarks" / "device_check" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pack = _load("pack")
run = _load("run")


def _container(entries: list[tuple[int, bytes]]) -> bytes:
    """A fatbin container of ELF-kind entries, each (sm, payload), payloads padded to 8 bytes as nvcc pads."""
    body = b""
    for sm, payload in entries:
        padded = payload + bytes(-len(payload) % 8)
        body += pack.ENTRY.pack(2, 0x101, pack.ENTRY.size, len(padded), 0, len(payload), 0, 0, sm, 64, 0) + padded
    return pack.CONTAINER.pack(pack.FATBIN_MAGIC, 1, pack.CONTAINER.size, len(body)) + body


def _elf(section: bytes) -> bytearray:
    """A minimal 64-bit little-endian ELF file with a ``.nv_fatbin`` section holding ``section``."""
    names = b"\0.nv_fatbin\0.shstrtab\0"
    fat_at = 64
    names_at = fat_at + len(section)
    shoff = names_at + len(names) + (-(names_at + len(names)) % 8)
    header = (
        b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    )
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, fat_at, len(section), 0, 0, 8, 0),
        struct.pack("<IIQQQQIIQQ", 12, 3, 0, 0, names_at, len(names), 0, 0, 1, 0),
    ]
    data = header + section + names
    return bytearray(data + bytes(shoff - len(data)) + b"".join(sections))


def test_cut_keeps_only_the_chosen_architecture_and_every_offset():
    images = {sm: bytes([sm]) * (100 + sm) for sm in (75, 80, 90, 120)}
    # Two containers with 8 bytes of zero padding between them, as in the real section.
    section = (
        _container([(75, images[75]), (90, images[90])]) + bytes(8) + _container([(80, images[80]), (120, images[120])])
    )
    data = _elf(section)
    before = bytes(data)
    report = pack.cut_fatbin(data, 90)
    assert (report.entries, report.kept, report.archs) == (4, 1, (75, 80, 90, 120))
    assert len(data) == len(before)
    assert bytes(data).count(images[90]) == 1 and bytes(data).find(images[90]) == before.find(images[90])
    for sm in (75, 80, 120):
        assert images[sm] not in bytes(data)
    # Only payload bytes changed: every container and entry header is where and what it was.
    changed = [i for i in range(len(data)) if data[i] != before[i]]
    assert len(changed) == sum(len(images[sm]) for sm in (75, 80, 120))
    assert report.zeroed_bytes == sum(len(images[sm]) + (-len(images[sm]) % 8) for sm in (75, 80, 120))


def test_cut_refuses_an_architecture_the_library_lacks_in_one_line():
    data = _elf(_container([(80, b"x" * 16)]))
    with pytest.raises(pack.PackError, match=r"^no kernel image for sm_90 in the library \(it has sm_80\)$"):
        pack.cut_fatbin(data, 90)
    with pytest.raises(pack.PackError, match="not a 64-bit little-endian ELF"):
        pack.cut_fatbin(bytearray(b"MZ" + bytes(100)), 90)


def test_size_check_refuses_over_the_limit(tmp_path):
    pack.check_size(64 * 2**20, 64)
    with pytest.raises(pack.PackError, match=r"^64\.0 MiB would travel, over the 63\.9 MiB") as caught:
        pack.check_size(64 * 2**20, 63.9)
    assert "\n" not in str(caught.value)


def test_travelling_bytes_counts_what_git_sends_and_the_carried_folder(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("carried/\nbuild/\n")
    (tmp_path / "tracked.py").write_bytes(b"a" * 1000)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "big").write_bytes(b"b" * 5000)
    (tmp_path / "carried").mkdir()
    (tmp_path / "carried" / "x.tar.xz").write_bytes(b"c" * 300)
    # Ignored and not carried: not counted; untracked and not ignored: counted, as the device tool counts it.
    assert pack.travelling_bytes(tmp_path, [tmp_path / "carried"]) == 1000 + len("carried/\nbuild/\n") + 300


def test_device_script_command_line():
    shown = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/device_check/run.py"), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "--budget-s" in shown.stdout and "--dry-run" in shown.stdout
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/device_check/run.py"), "--out", "x", "--models", "googlenet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "--models: googlenet not in this check" in refused.stderr


def test_install_without_a_pack_says_so_in_one_line(tmp_path, capsys):
    check = run.Check(tmp_path, 60, tmp_path / "work")
    assert not run.install(check, tmp_path / "nothing")
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "run benchmarks/device_check/pack.py first" in line


def test_table_has_one_line_per_row_with_the_bare_loop_and_the_nodes_on_the_gpu():
    row = {
        "check_variant": "tf32", "model": "resnet50", "precision": "fp16", "engine": "ort-cuda", "fp32_math": None,
        "status": "ok", "engine_settings": json.dumps({"include_copies": False}), "latency_ms_p50": 1.23456,
        "latency_ms_p99": 2.0, "throughput_samples_per_s": 800.0, "accuracy_metric": "top1_agreement",
        "accuracy_value": 1.0, "accuracy_cosine": 0.99999,
    }  # fmt: skip
    # gpu_bare_loop.py's own line format: model, precision, engine, batch, status, suite p50, bare p50, ratio.
    loop = f"{'resnet50':<14}{'fp16':<6}{'ort-cuda':<10}{1:>6}  {'ok':<12}{1.235:>11.3f}{1.1:>11.3f}{1.123:>8.3f}\n"
    loop += f"{'resnet50':<14}{'int8':<6}{'ort-cuda':<10}{1:>6}  {'failed':<12}{'-':>11}{'':>11}{'':>8}  Error: x\n"
    bare = {(*key, "tf32"): p50 for key, p50 in run.bare_p50s(loop).items()}
    assert bare == {("resnet50", "fp16", "tf32"): 1.1}
    placed = {("resnet50", "fp16", "ort-cuda"): {"nodes": 60, "by_provider": {"CUDAExecutionProvider": 58}}}
    text = run.table([row], [{"step": "install", "status": 0, "seconds": 3.2}], bare, placed)
    assert "| resnet50 | tf32 | fp16 | - | no | 1.235 | 1.1 | 2 | 800 | top1_agreement 1 | 1 | 58/60 | ok |" in text
    assert "| install | 0 | 3.2 | - |" in text


def test_node_providers_reads_the_provider_of_every_node_from_a_profile():
    providers = _load("node_providers")
    trace = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "conv1_fence_before", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {
            "cat": "Node",
            "name": "nms_kernel_time",
            "args": {"provider": "CPUExecutionProvider", "op_name": "NonMaxSuppression"},
        },
        # A node run twice (three runs profiled) is one node.
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
    ]
    nodes = providers.node_providers(trace)
    assert nodes == {"conv1": ("CUDAExecutionProvider", "Conv"), "nms": ("CPUExecutionProvider", "NonMaxSuppression")}
    assert providers.summary(nodes) == {
        "nodes": 2,
        "by_provider": {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 1},
        "off_gpu_ops": {"NonMaxSuppression": 1},
    }


def test_a_step_that_hangs_mid_line_is_stopped_at_the_budget(tmp_path, monkeypatch):
    # A progress bar redrawn with a carriage return and no newline, then a hang: the step must still stop at
    # the budget's end (a line-by-line read would wait for a newline that never comes).
    monkeypatch.setattr(run, "RESERVE_S", 0)
    check = run.Check(tmp_path, 5.5, tmp_path / "work")
    program = "import sys, time; print('cells 0%\\rcells 50%', flush=True); sys.stdout.write('cells 60%'); "
    program += "sys.stdout.flush(); time.sleep(60)"
    started = time.monotonic()
    assert check.step("hang", [sys.executable, "-c", program]) == 124
    assert time.monotonic() - started < 20
    assert check.out_of_time and not check.failed
    log = (tmp_path / "check.log").read_text()
    assert "\ncells 50%\n" in log and "at the end of the budget" in log


def test_device_script_says_why_bert_cannot_run_there():
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/device_check/run.py"), "--out", "x", "--models", "resnet50,bert_base"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "bert_base is exported from TensorFlow" in refused.stderr
