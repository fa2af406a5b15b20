"""``python -m attnlab.tasks_train``: the algorithmic-task trainer (``attnlab.cli.tasks_train``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.tasks_train import define_flags, main
  common.run(main, define_flags)
