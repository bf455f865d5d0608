"""This CPU's clock and float32 peak, measured rather than read from ``/proc/cpuinfo``.

A VM's ``cpu MHz`` is the host's nominal figure, not the clock a core runs at: on this project's
2-core AMD EPYC guests it reads 2445-2596 MHz while the cores run at about 3.66 GHz (boost), so a
peak taken from it is too low and a network can appear to run above "100 % of peak". This script
compiles a small C program with the system's C compiler (``cc``/``gcc``, ``-O3 -mavx2 -mfma``) and
runs two loops:

- **clock**: a chain of dependent 64-bit integer adds (one add per cycle on every x86 core since
  the Pentium 4's successors), so adds per second = cycles per second;
- **fp32 peak**: ``threads`` POSIX threads, each running 12 independent 8-lane AVX2 FMA chains
  (enough to fill two FMA pipes of latency 4-5), counted as 2 FLOP per lane per FMA (AVX-512
  gives the same fp32 rate on AMD Zen 4, whose 512-bit units are two 256-bit halves);
- **bf16 peak**, where the CPU has AVX512-BF16: the same with ``vdpbf16ps`` (16 lanes, each two
  bf16 products summed into a float32: 4 FLOP per lane), what PyTorch's bf16 convolutions use.

The best of five rounds of each (fp32 measured before and after bf16) is printed as JSON:
``{"clock_ghz": ..., "threads": ..., "fma_gflops": ..., "bf16_gflops": ... or null}``. ``benchmarks/end_to_end.py`` uses
``fma_gflops`` as the peak its network figures are a share of (and falls back to
cores x 32 FLOP/cycle x ``cpu MHz`` where no C compiler or no AVX2/FMA is at hand).

    python benchmarks/cpu_peak.py [--threads 2] [--iterations 200000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
#define ADD4 "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
static double clock_ghz(long n) {
    long x = 0; double t0 = now();
    for (long i = 0; i < n; i++) { __asm__ volatile(ADD4 ADD4 ADD4 ADD4 : "+r"(x)); }
    double dt = now() - t0; if (x == 42) printf("!");
    return 16.0 * n / dt / 1e9;
}
static void *fma_chains(void *arg) {
    long n = *(long *)arg; __m256 a[12];
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < n; i++) { for (int k = 0; k < 12; k++) a[k] = _mm256_fmadd_ps(a[k], b, c); }
    float s = 0, o[8]; for (int k = 0; k < 12; k++) { _mm256_storeu_ps(o, a[k]); s += o[0]; }
    if (s == 42.f) printf("!");
    return NULL;
}
__attribute__((target("avx512f,avx512bf16"))) static void *bf16_chains(void *arg) {
    long n = *(long *)arg; __m512 a[12];
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int k = 0; k < 12; k++) a[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < n; i++) { for (int k = 0; k < 12; k++) a[k] = _mm512_dpbf16_ps(a[k], b, c); }
    float s = 0, o[16]; for (int k = 0; k < 12; k++) { _mm512_storeu_ps(o, a[k]); s += o[0]; }
    if (s == 42.f) printf("!");
    return NULL;
}
static double best_of(int threads, long n, void *(*fn)(void *), double flop_per_iter) {
    pthread_t th[256]; double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, fn, &n);
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double f = (double)threads * n * flop_per_iter / (now() - t0) / 1e9; if (f > best) best = f;
    }
    return best;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]); long n = atol(argv[2]);
    if (threads < 1 || threads > 256 || n < 1) return 2;
    double ghz = 0;
    for (int r = 0; r < 5; r++) { double g = clock_ghz(n / 4); if (g > ghz) ghz = g; }
    double fp32 = best_of(threads, n, fma_chains, 12 * 8 * 2);
    double bf16 = 0;  /* one vdpbf16ps: 16 lanes x 2 products x (multiply + add) */
    if (__builtin_cpu_supports("avx512bf16")) bf16 = best_of(threads, n / 2, bf16_chains, 12 * 16 * 4);
    double again = best_of(threads, n, fma_chains, 12 * 8 * 2);  /* a VM's first rounds can run slow */
    if (again > fp32) fp32 = again;
    printf("{\"clock_ghz\": %.3f, \"threads\": %d, \"fma_gflops\": %.1f, \"bf16_gflops\": %.1f}\n",
           ghz, threads, fp32, bf16);
    return 0;
}
"""


def compiler() -> str | None:
    """The C compiler to build the probe with, or None."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def measure(threads: int = 2, iterations: int = 200_000_000) -> dict[str, Any]:
    """Compile and run the probe; its figures. Raises RuntimeError when it cannot be built or run
    (no C compiler, not x86-64, no AVX2/FMA)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    with tempfile.TemporaryDirectory(prefix="geounet-peak-") as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(SOURCE)
        build = subprocess.run(
            [cc, "-O3", "-mavx2", "-mfma", "-pthread", str(src), "-o", str(exe)],
            capture_output=True,
            text=True,
            check=False,
        )
        if build.returncode != 0:
            raise RuntimeError(f"{cc} could not build the probe: {build.stderr.strip()[-300:]}")
        run = subprocess.run(
            [str(exe), str(threads), str(iterations)], capture_output=True, text=True, check=False
        )
        if run.returncode != 0:
            raise RuntimeError(f"the probe failed (exit {run.returncode}; AVX2/FMA missing?)")
    result: dict[str, Any] = json.loads(run.stdout)
    result["flop_per_cycle_per_core"] = result["fma_gflops"] / threads / result["clock_ghz"]
    if not result["bf16_gflops"]:
        result["bf16_gflops"] = None  # no AVX512-BF16: bf16 runs emulated, no bf16 peak
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=200_000_000)
    args = parser.parse_args()
    try:
        result = measure(args.threads, args.iterations)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    print(
        f"clock {result['clock_ghz']:.2f} GHz; fp32 FMA peak on {result['threads']} threads "
        f"{result['fma_gflops']:.1f} GFLOP/s ({result['flop_per_cycle_per_core']:.1f} FLOP/cycle per core); "
        f"bf16 peak {result['bf16_gflops'] or 'none (no AVX512-BF16)'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
