"""The run engine: training (``training``), evaluation by length (``evaluation``), sweeps
(``sweeps``, with the ``lm`` and ``tasks`` runners), the algorithmic-task trainer
(``tasks``) and the retrieval study (``retrieval``). The workdir layout they share is
``attnlab.workdir``; the command-line entry points over them are ``attnlab.cli``."""

from attnlab.engine import evaluation, sweeps, training
from attnlab.engine import tasks  # noqa: E402  (registers the 'tasks' sweep runner)
from attnlab.engine import retrieval  # noqa: E402

__all__ = ["evaluation", "retrieval", "sweeps", "tasks", "training"]
