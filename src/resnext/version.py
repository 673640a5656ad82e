"""The package's version, in a module of its own so that any layer can name it without importing the package root
(which imports the inference layer: a cycle)."""

__version__ = "0.3.0"
