"""The sections of ``benchmarks/gpu_suite.py`` and the tools that carry it to the lent GPU machine.

- :mod:`gpu.latency`: the latency table's fidelity (GPUNet paper, Fig. 4), NVIDIA's GPUNet-0/1/2 end to end, and
  Sobol sampling + stratification against the table just built.
- :mod:`gpu.training`: AMP training throughput against a plain timm loop, and the real trainer worker end to end.
- ``prepare.py`` (here, before a device run): download the wheels the device image lacks into ``.whl/``.
- ``install.py`` and ``run.sh`` (on the device): install those wheels where needed and run the suite.
"""
