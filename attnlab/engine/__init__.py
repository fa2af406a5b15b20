"""The run engine: training (``training``), evaluation by length (``evaluation``), sweeps
(``sweeps``, with the ``lm`` and ``tasks`` runners), the algorithmic-task trainer
(``tasks``) and the retrieval study (``retrieval_study``). The workdir layout they share is
``attnlab.workdir``; the command-line entry points over them are ``attnlab.cli``."""

from attnlab.engine import evaluation, sweeps, training
from attnlab.engine import tasks  # noqa: E402  (registers the 'tasks' sweep runner)
from attnlab.engine import retrieval_study  # noqa: E402

__all__ = ["evaluation", "retrieval_study", "sweeps", "tasks", "training"]
