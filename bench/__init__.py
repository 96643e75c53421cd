"""Benchmarks, run as ``python -m bench <name>``; every figure is printed beside the parse-only limit of the same
input, measured in the same process, because on a shared machine only that ratio is comparable between runs."""
