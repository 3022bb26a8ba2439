"""modi: learn when and where mobile deep-learning inference should run."""

__version__ = "0.1.0"
