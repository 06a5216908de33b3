"""The benchmarks behind `cggm-seg benchmark balance|overhead|gpu`: modality balance, CGGM's step cost,
and the BraTS bundle's GPU cost (docs/BENCHMARK.md, docs/PERFORMANCE.md)."""
