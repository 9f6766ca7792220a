"""Training on several devices and nodes through Lightning's strategies, set up for Hugging Face models.

``FSDP`` and ``DeepSpeed`` are the strategy classes the recipes under ``recipes/distributed/`` name; ``checks``
turns combinations that cannot run here into one-line errors before anything starts; ``gathering`` makes sharded
weights whole for saving.
"""

from lit_factory.distributed.deepspeed import DeepSpeed
from lit_factory.distributed.fsdp import FSDP

__all__ = ["DeepSpeed", "FSDP"]
