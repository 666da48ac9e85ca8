"""Console scripts: each module only parses, checks and calls the package (shared options: ``options.py``)."""
