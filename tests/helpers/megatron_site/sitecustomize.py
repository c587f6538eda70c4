"""Put this folder on PYTHONPATH to run Megatron on CPU in every process of a test (torchrun
workers, the checkpoint import/export subprocesses): see lwm/models/megatron_cpu.py."""

from lwm.models import megatron_cpu

megatron_cpu.enable(training=True)
