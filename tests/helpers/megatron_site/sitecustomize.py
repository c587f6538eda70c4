"""Put this folder on PYTHONPATH to run Megatron on CPU in every process of a test (torchrun
workers, the checkpoint import/export subprocesses): see tests/helpers/megatron_cpu.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import megatron_cpu  # noqa: E402

megatron_cpu.enable()
