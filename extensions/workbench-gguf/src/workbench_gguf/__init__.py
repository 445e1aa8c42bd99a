"""workbench-gguf: a Quantization Workbench plug-in adding the `gguf` method (see `method.py`)."""
