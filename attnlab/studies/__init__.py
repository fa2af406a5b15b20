"""Studies beyond training and evaluating by length: each module registers a runner in
``attnlab.engine.studies.STUDIES`` (``sweep.runner``) and is run by ``python -m
attnlab.sweep --config=configs/<study>.py``."""
