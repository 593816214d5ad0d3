"""Every float32 in [-448, 448] through the FP8 quantiser's integer rounding (fp8_kernel.e4m3_bits,
the Triton kernel's algorithm) against torch's own float8_e4m3fn cast, bit pattern by bit pattern.

    python benchmarks/e4m3_exhaustive.py     # ~7 minutes on one CPU core (2.3e9 values)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from refit_core.execution.fp8_kernel import e4m3_bits  # noqa: E402
from refit_core.execution.quantize import FP8  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    t0 = time.time()
    top, step, bad = 0x43E00000, 1 << 24, 0  # 448.0's bit pattern
    for lo in range(0, top + 1, step):
        y = torch.arange(lo, min(lo + step, top + 1), dtype=torch.int64).to(torch.int32).view(torch.float32)
        for v in (y, -y):
            bad += int((e4m3_bits(v) != v.to(FP8).view(torch.uint8)).sum())
    print(f"float32 bit patterns 0..0x43E00000, both signs: {bad} mismatches, {time.time() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
