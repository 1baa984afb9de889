"""Pack onnxruntime-gpu small enough to travel to a borrowed GPU machine with the repository.

The borrowed machine (README: "A check for a borrowed H100") has no network and takes at most 64 MiB of
files with each command: the repository's working tree plus the folders a call names in ``carry``. The
onnxruntime-gpu wheel is about 256 MB, nearly all of it CUDA kernels for six GPU generations inside
``libonnxruntime_providers_cuda.so``. This packer, run here where the registry is reachable:

1. downloads the pinned wheel (``pip download``, for the device's Python) into a cache outside the repository;
2. keeps what ONNX Runtime's Python module and its CUDA provider need: the TensorRT provider (TensorRT is not
   on that machine) and ``libonnxruntime.so`` (the C API, which the Python module does not link) are left out;
3. in the CUDA provider's ``.nv_fatbin`` section, zeroes the payload of every kernel image that is not for the
   chosen GPU architecture (``--arch 90`` for the H100), leaving every size and offset as it was, so the
   library's layout is untouched and the zeros compress to almost nothing;
4. writes one ``.tar.xz`` and a ``manifest.json`` into a git-ignored folder of the repository
   (``.device_check/`` by default), which the device call names in ``carry``;
5. adds up what would travel (tracked and untracked-not-ignored files plus that folder) and refuses, with one
   line, when it is over the limit.

    python benchmarks/device_check/pack.py [--arch 90] [--python 3.12] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ORT_VERSION = "1.31.1"
CARRY_DIR = ".device_check"
LIMIT_MIB = 64
# What the CUDA provider does not need on the borrowed machine: the TensorRT provider (no TensorRT there) and
# the C API library (the Python module is linked without it).
LEFT_OUT = ("libonnxruntime_providers_tensorrt.so", "libonnxruntime.so")
CUDA_PROVIDER = "libonnxruntime_providers_cuda.so"
# The suite's INT8 build cleans graphs with onnxslim (calibration/graph.py), which the device lacks; its own
# needs (onnx, sympy, packaging, colorama, ml-dtypes) are there. 0.25 MB.
EXTRAS = ("onnxslim==0.1.98",)

FATBIN_MAGIC = 0xBA55ED50
# A fatbin container: magic, version, header size, size of the entries after the header.
CONTAINER = struct.Struct("<IHHQ")
# An entry: kind (1 PTX, 2 ELF cubin), version, header size, padded payload size, -, payload size, -, -,
# SM architecture (90 for sm_90), address bits, -. The payload starts right after the entry's header.
ENTRY = struct.Struct("<HHIIIIIIIII")


class PackError(Exception):
    """A problem a user can fix (wrong file, over the size limit); main() prints it as one line."""


@dataclass
class CutReport:
    """What ``cut_fatbin`` did: entries seen and kept, bytes zeroed, and the architectures found."""

    entries: int = 0
    kept: int = 0
    zeroed_bytes: int = 0
    archs: tuple[int, ...] = ()


def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of the section called ``name`` in a 64-bit little-endian ELF image."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PackError("not a 64-bit little-endian ELF file")
    shoff, _, _, _, _, shentsize, shnum, shstrndx = struct.unpack_from("<QIHHHHHH", data, 0x28)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for header in headers:
        start = names_at + header[0]
        if data[start : data.index(b"\0", start)].decode() == name:
            return header[4], header[5]
    raise PackError(f"the library has no {name} section")


def cut_fatbin(data: bytearray, arch: int) -> CutReport:
    """Zero, in place, the payload of every kernel image in ``data``'s ``.nv_fatbin`` section whose SM
    architecture is not ``arch``; headers, sizes and offsets stay as they are (the file's length too)."""
    start, size = elf_section(data, ".nv_fatbin")
    report = CutReport()
    archs = set()
    at, end = start, start + size
    while at + CONTAINER.size <= end:
        magic, _, header_size, fat_size = CONTAINER.unpack_from(data, at)
        if magic != FATBIN_MAGIC:
            # Containers are 8-byte aligned with zero padding between them: step over the padding.
            if magic == 0:
                at += 8
                continue
            raise PackError(f"unexpected bytes in .nv_fatbin at offset {at - start:#x}")
        entry, entries_end = at + header_size, at + header_size + fat_size
        while entry < entries_end:
            _, _, entry_header, padded, _, _, _, _, sm, _, _ = ENTRY.unpack_from(data, entry)
            payload = entry + entry_header
            report.entries += 1
            archs.add(sm)
            if sm == arch:
                report.kept += 1
            else:
                data[payload : payload + padded] = bytes(padded)
                report.zeroed_bytes += padded
            entry = payload + padded
        at = entries_end
    report.archs = tuple(sorted(archs))
    if not report.kept:
        found = ", ".join(f"sm_{a}" for a in report.archs)
        raise PackError(f"no kernel image for sm_{arch} in the library (it has {found})")
    return report


def download_wheel(version: str, python: str, cache: Path) -> Path:
    """The onnxruntime-gpu ``version`` wheel for CPython ``python`` on x86-64 Linux, downloaded into ``cache``
    unless it is there already."""
    tag = "cp" + python.replace(".", "")
    found = sorted(cache.glob(f"onnxruntime_gpu-{version}-{tag}-{tag}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
        "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "-d", str(cache),
        f"onnxruntime-gpu=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache.glob(f"onnxruntime_gpu-{version}-{tag}-{tag}-*.whl"))
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackError(f"pip could not download onnxruntime-gpu=={version} for Python {python}: {last}")
    return found[0]


def download_extras(specs: list[str], out_dir: Path) -> list[Path]:
    """Pure-Python wheels (``name==version``) the suite uses and the device lacks, downloaded into ``out_dir``
    (which travels); each must be ``py3-none-any``, since no other Python's build could be checked here."""
    wheels = []
    for spec in specs:
        name = spec.split("==")[0].replace("-", "_")
        for old in out_dir.glob(f"{name}-*.whl"):
            old.unlink()
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(out_dir),
            spec,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        found = sorted(out_dir.glob(f"{name}-*-py3-none-any.whl"))
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no pure-Python wheel"])[-1]
            raise PackError(f"pip could not download {spec} as a pure-Python wheel: {last}")
        wheels.append(found[0])
    return wheels


def travelling_bytes(repo: Path, carried: list[Path]) -> int:
    """Bytes that a device call sends: the working tree's tracked and untracked-not-ignored files (git's view,
    as the device tool counts them) plus every file under the ``carried`` paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    total = sum((repo / name.decode()).stat().st_size for name in listed if name and (repo / name.decode()).is_file())
    for path in carried:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def check_size(total: int, limit_mib: float) -> None:
    """Refuse (PackError) when ``total`` bytes are over ``limit_mib`` MiB."""
    if total > limit_mib * 2**20:
        raise PackError(
            f"{total / 2**20:.1f} MiB would travel, over the {limit_mib:g} MiB a device call takes: "
            "leave something out (an untracked file?) or pack with a higher --level"
        )


def compress(source: Path, target: Path, level: str) -> None:
    """``source`` compressed with xz into ``target``: the xz tool on every core where it exists (minutes
    faster on 200+ MB), else Python's lzma, which the device's Python can read either way."""
    xz = shutil.which("xz")
    if xz:
        with target.open("wb") as out:
            subprocess.run([xz, "-T0", f"-{level}", "-c", str(source)], stdout=out, check=True)
        return
    import lzma

    preset = int(level.rstrip("e")) | (lzma.PRESET_EXTREME if level.endswith("e") else 0)
    with source.open("rb") as src, lzma.open(target, "wb", preset=preset) as out:
        shutil.copyfileobj(src, out, 2**24)


def pack(wheel: Path, arch: int, out_dir: Path, level: str) -> dict:
    """Write ``out_dir``/onnxruntime-gpu.tar.xz (the wheel's files less ``LEFT_OUT``, the CUDA provider cut to
    ``arch``) and ``out_dir``/manifest.json; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "onnxruntime-gpu.tar.xz"
    cut: CutReport | None = None
    kept_bytes = left_bytes = 0
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zipped:
        plain = Path(tmp) / "ort.tar"
        with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
            for info in zipped.infolist():
                base = Path(info.filename).name
                if info.is_dir():
                    continue
                if any(base.startswith(name) for name in LEFT_OUT):
                    left_bytes += info.file_size
                    continue
                data = zipped.read(info)
                if base == CUDA_PROVIDER:
                    data = bytearray(data)
                    cut = cut_fatbin(data, arch)
                member = tarfile.TarInfo(info.filename)
                member.size = len(data)
                # Keep the wheel's permission bits (the .so files are executable).
                member.mode = (info.external_attr >> 16) & 0o777 or 0o644
                tar.addfile(member, io.BytesIO(data))
                kept_bytes += len(data)
        if cut is None:
            raise PackError(f"{wheel.name} has no {CUDA_PROVIDER}: is it an onnxruntime-gpu wheel?")
        started = time.perf_counter()
        compress(plain, archive, level)
        seconds = time.perf_counter() - started
    manifest = {
        "wheel": wheel.name,
        "wheel_bytes": wheel.stat().st_size,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "arch": f"sm_{arch}",
        "archs_in_wheel": [f"sm_{a}" for a in cut.archs],
        "fatbin_entries": cut.entries,
        "fatbin_entries_kept": cut.kept,
        "fatbin_bytes_zeroed": cut.zeroed_bytes,
        "left_out": list(LEFT_OUT),
        "left_out_bytes": left_bytes,
        "unpacked_bytes": kept_bytes,
        "archive": archive.name,
        "archive_bytes": archive.stat().st_size,
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "xz_level": level,
        "compress_s": round(seconds, 1),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: download, cut, compress, check the size; 0 when what travels fits, 1 (one line) if not."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="the GPU's SM architecture to keep (90: H100)")
    parser.add_argument("--python", default="3.12", help="the device's Python (major.minor), for the wheel's tag")
    parser.add_argument("--version", default=ORT_VERSION, help="onnxruntime-gpu version")
    parser.add_argument("--wheel", type=Path, help="an onnxruntime-gpu wheel already here (no download)")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "aimatrix-onnx" / "wheels",
        help="where the downloaded wheel is kept (outside the repository: it must not travel)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / CARRY_DIR, help="the git-ignored folder to carry")
    parser.add_argument("--level", default="6", help="xz preset, e.g. 6 or 9e (smaller, slower)")
    parser.add_argument(
        "--extra", default=",".join(EXTRAS),
        help="comma list of pure-Python wheels to carry too (default: %(default)s; '' for none)",
    )  # fmt: skip
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="what a device call may carry")
    args = parser.parse_args(argv)
    try:
        out = args.out.resolve()
        # Made first: git matches the folder pattern in .gitignore only against a folder that exists.
        out.mkdir(parents=True, exist_ok=True)
        inside = out.is_relative_to(REPO)
        if inside and subprocess.run(["git", "check-ignore", "-q", str(out)], cwd=REPO).returncode != 0:
            raise PackError(f"{out} is not ignored by git: it would travel twice (add it to .gitignore)")
        wheel = args.wheel or download_wheel(args.version, args.python, args.cache)
        manifest = pack(wheel, args.arch, out, args.level)
        extras = download_extras([e for e in args.extra.split(",") if e], out)
        manifest["extra_wheels"] = [w.name for w in extras]
        total = travelling_bytes(REPO, [out])
        manifest["travelling_bytes"] = total
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(
            f"{manifest['wheel']} ({manifest['wheel_bytes'] / 2**20:.1f} MiB) -> {out / manifest['archive']} "
            f"({manifest['archive_bytes'] / 2**20:.1f} MiB; {manifest['fatbin_entries_kept']} of "
            f"{manifest['fatbin_entries']} kernel images kept for {manifest['arch']}; xz in "
            f"{manifest['compress_s']} s)"
        )
        print(f"travelling with a device call: {total / 2**20:.1f} MiB of {args.limit_mib:g} MiB")
        check_size(total, args.limit_mib)
    except PackError as exc:
        print(f"pack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
