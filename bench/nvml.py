"""GPU memory and energy of a cell, through NVML (NVIDIA's management library, via the maintained ``nvidia-ml-py``).

``nvml_status()`` says for ``env.json`` whether NVML works here and, per GPU, whether it has the energy counter
(Volta and newer), or why not. ``GpuMeter`` reads, around a cell's timed window, the device memory its process
holds and the energy counter: the energy is the whole device's, so it is only the cell's when nothing else runs
on that GPU (the suite runs one cell per device at a time).
"""

from __future__ import annotations

import os
from typing import Any


def _nvml():
    """The initialised ``pynvml`` module, or the reason it cannot be used (a string)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (pip install -e .)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML cannot start ({exc}): no NVIDIA driver here"
    return pynvml


def nvml_status() -> dict[str, Any]:
    """``{"available": bool, "reason": why not or None, "driver": version, "gpus": [{"index", "name",
    "energy_counter", "energy_reason"}]}``: what ``env.json`` records about GPU memory and energy columns."""
    nvml = _nvml()
    if isinstance(nvml, str):
        return {"available": False, "reason": f"{nvml}; gpu_memory_mib and the energy columns are empty"}
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            entry: dict[str, Any] = {"index": index, "name": nvml.nvmlDeviceGetName(handle)}
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                entry["energy_counter"] = True
            except nvml.NVMLError as exc:
                entry.update(energy_counter=False, energy_reason=f"{exc} (energy columns empty on this GPU)")
            gpus.append(entry)
        driver = nvml.nvmlSystemGetDriverVersion()
    finally:
        nvml.nvmlShutdown()
    return {"available": True, "reason": None, "driver": driver, "gpus": gpus}


class GpuMeter:
    """The device memory of this process and the energy of the GPU it runs on, over one window.

    ``start()`` reads the energy counter, ``stop(samples)`` reads it again and returns the row's
    ``gpu_memory_mib``, ``energy_j_per_sample`` and ``samples_per_j`` (None where NVML cannot say). A window cut
    into rounds (other cells run between them) is ``start()`` and ``pause(samples)`` per round, then
    ``stop(0)``: the energy and inputs of the rounds alone are summed. The GPU is the one whose running processes
    include this one (CUDA's device numbering can differ from NVML's), else NVML's ``device_index``."""

    def __init__(self, device_index: int = 0):
        self.nvml = _nvml()
        self.handle = None
        self._energy_mj: int | None = None
        # Energy (J) and inputs of the rounds paused so far; None once a round's energy could not be read.
        self._joules: float | None = 0.0
        self._samples = 0
        if isinstance(self.nvml, str):
            return
        self.handle = self._own_device() or self.nvml.nvmlDeviceGetHandleByIndex(device_index)

    def _own_device(self):
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            if self._process_memory(handle) is not None:
                return handle
        return None

    def _process_memory(self, handle) -> int | None:
        try:
            processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self.nvml.NVMLError:
            return None
        # usedGpuMemory is None where the driver withholds it (some containers); a process in another PID
        # namespace is not found at all.
        return next((p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory), None)

    def _energy(self) -> int | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self.nvml.NVMLError:
            return None

    def start(self) -> None:
        """Mark the start of the window (the energy counter's reading)."""
        if self.handle is not None:
            self._energy_mj = self._energy()

    def pause(self, samples: int) -> None:
        """End the current round (``samples`` inputs inferred in it) and add its energy to the window's."""
        if self.handle is None or self._joules is None:
            return
        end = self._energy()
        if self._energy_mj is None or end is None or end < self._energy_mj:
            self._joules = None
            return
        self._joules += (end - self._energy_mj) / 1e3
        self._samples += samples
        self._energy_mj = None

    def stop(self, samples: int) -> dict[str, float | None]:
        """The window's columns, ``samples`` being the inputs inferred since the last ``start()`` (0 when the
        rounds were paused already)."""
        columns: dict[str, float | None] = {"gpu_memory_mib": None, "energy_j_per_sample": None, "samples_per_j": None}
        if self.handle is None:
            return columns
        used = self._process_memory(self.handle)
        columns["gpu_memory_mib"] = used / 2**20 if used else None
        if self._energy_mj is not None:
            self.pause(samples)
        joules, inferred = self._joules, self._samples
        if joules and inferred > 0:
            columns.update(energy_j_per_sample=joules / inferred, samples_per_j=inferred / joules)
        return columns

    def close(self) -> None:
        if not isinstance(self.nvml, str):
            self.nvml.nvmlShutdown()
