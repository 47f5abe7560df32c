"""Fine-tuning modes and readouts of a backbone, chosen by name (``readout``): the registry, and
the modules that fill it (each registers its own entries on import)."""

from headstart.readouts import consistency, distill, frozen, full, prompt, setfit
from headstart.readouts.registry import READOUTS, ReadoutEntry, readout_entry, register

__all__ = [
    "READOUTS",
    "ReadoutEntry",
    "consistency",
    "distill",
    "frozen",
    "full",
    "prompt",
    "readout_entry",
    "register",
    "setfit",
]
