"""What CPU the model runs on: its name and the instruction-set features that decide which int8 kernels
onnxruntime uses (AVX2; AVX-512; VNNI, whose u8s8 kernels do not saturate; AMX). Benchmarks record it
with their figures, and the int8 check is cached per CPU."""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass

# /proc/cpuinfo flag -> the name admins know. Order: what is printed.
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "asimddp": "NEON dot product",
    "i8mm": "NEON i8mm",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    features: tuple[str, ...]  # the FEATURES names present
    cores: int

    @property
    def int8_class(self) -> str:
        """The class that decides int8 fidelity: VNNI/AMX kernels multiply u8 x s8 exactly; plain AVX2 and
        AVX-512 use pairwise adds that saturate 16 bits unless weights have 7-bit range."""
        if {"AVX-512 VNNI", "AVX-VNNI", "AMX-INT8"} & set(self.features):
            return "x86-64 with VNNI"
        if "AVX-512" in self.features:
            return "x86-64 AVX-512 without VNNI"
        if "AVX2" in self.features:
            return "x86-64 AVX2 without VNNI"
        return f"{platform.machine()} ({', '.join(self.features) or 'no listed features'})"

    @property
    def signature(self) -> str:
        """Changes when the CPU (or what onnxruntime may use of it) changes: the int8 check's cache key."""
        text = f"{platform.machine()}|{self.model}|{','.join(self.features)}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {"cpu": self.model, "cpu_features": list(self.features), "cpu_int8_class": self.int8_class}


@functools.cache
def cpu_info() -> CpuInfo:
    import os

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "CPU part") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    features = tuple(name for flag, name in FEATURES.items() if flag in flags)
    return CpuInfo(model=model or "unknown", features=features, cores=os.cpu_count() or 1)
