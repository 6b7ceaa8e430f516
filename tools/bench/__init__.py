"""Speed measurements of FIFO diagonal denoising, shared by ``scripts/benchmark.py`` and its GPU report.

- :mod:`tools.bench.presets`: the models and sizes benchmarked;
- :mod:`tools.bench.options`: the benchmark's options, parsed once (:class:`BenchOptions`);
- :mod:`tools.bench.core`: the shared set-up (:class:`Bench`: model, queue, paths), timers, the
  machine's description and load;
- :mod:`tools.bench.measure`: timing of both paths, peak memory, whole runs, fresh-process probes;
- :mod:`tools.bench.flops`: FLOPs of one output frame per path and the machine's measured peak;
- :mod:`tools.bench.table`: the benchmark's results document and its table;
- :mod:`tools.bench.parallel`: ``--parallel windows`` under torchrun;
- :mod:`tools.bench.report`: the one-command report (``--report OUT_DIR``) with a time budget.
"""
