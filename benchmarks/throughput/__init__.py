"""`benchmarks/compare_transformers.py` as a small package.

- workloads.py: what is measured (sizes, dtypes, FLOP counts, inputs);
- measure.py: what every child shares (timing, memory, agreement,
  counting the model's runs, results files, progress lines);
- machine.py: the matmul limit in float32 and bfloat16;
- transformers_runner.py / keras_runner.py: one child process each side;
- parent.py: running the children; report.py: tables and plot;
- main.py: the command line.
"""
