"""headstart: self-supervised pretraining and transfer, with the head start measured."""

__version__ = "0.1.0"
