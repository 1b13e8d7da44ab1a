"Learn a model, read what it learned, check it against a known truth."
__version__ = "0.1.0"
