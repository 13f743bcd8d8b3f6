"""bench/devices.py -- peak figures of the accelerators the GPU scripts may land on, looked up by device name.

    peak(name) -> Peak(label, bf16_flops, bandwidth)     # dense bf16 tensor-core FLOP/s, HBM bytes/s

The figures are the vendors' datasheet numbers (dense, i.e. without 2:4 sparsity). They are what the MFU of
bench/gpu_step.py and the memory-bandwidth bound of bench/gpu_decode.py divide by; an unknown device (or the
CPU) gives None, and the scripts print "-" rather than guess. Override with PEAK_FLOPS / BANDWIDTH (env).
"""
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    label: str
    bf16_flops: float   # FLOP/s, dense
    bandwidth: float    # bytes/s


# first match wins: the more specific names first
TABLE = [
    ("H200", Peak("H200 (SXM, HBM3e)", 989e12, 4.8e12)),
    ("H100 PCIE", Peak("H100 PCIe", 756e12, 2.0e12)),
    ("H100 NVL", Peak("H100 NVL", 835e12, 3.9e12)),
    ("H100", Peak("H100 SXM (HBM3)", 989e12, 3.35e12)),
    ("H800", Peak("H800 SXM", 989e12, 3.35e12)),
    ("A100-SXM4-40GB", Peak("A100 SXM 40GB", 312e12, 1.555e12)),
    ("A100-PCIE-40GB", Peak("A100 PCIe 40GB", 312e12, 1.555e12)),
    ("A100 80GB PCIE", Peak("A100 PCIe 80GB", 312e12, 1.935e12)),
    ("A100", Peak("A100 SXM 80GB", 312e12, 2.039e12)),
    ("L40S", Peak("L40S", 362e12, 0.864e12)),
]


def peak(name: str) -> Peak | None:
    """The peak figures of a device named like torch.cuda.get_device_name() ('NVIDIA H100 80GB HBM3');
    PEAK_FLOPS / BANDWIDTH in the environment override (or supply) the numbers."""
    found = next((p for key, p in TABLE if key in name.upper()), None)
    flops, bw = os.environ.get("PEAK_FLOPS"), os.environ.get("BANDWIDTH")
    if flops or bw:
        base = found or Peak(name, float("nan"), float("nan"))
        found = Peak(base.label + " (env override)", float(flops) if flops else base.bf16_flops,
                     float(bw) if bw else base.bandwidth)
    return found


def device_name(device: str) -> str:
    import torch
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"
