"""Job tasks: each module ``NAME`` has ``run(cfg, out_dir) -> Path`` and is selected by ``task=NAME``."""
