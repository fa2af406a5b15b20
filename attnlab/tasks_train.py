"""``python -m attnlab.tasks_train`` (or ``attnlab-tasks-train``): the algorithmic-task trainer
(``attnlab.cli.tasks_train``)."""


def run() -> None:
  """The ``attnlab-tasks-train`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.tasks_train import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
