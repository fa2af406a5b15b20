"""``python -m attnlab.train`` (or ``attnlab-train``): the trainer (``attnlab.cli.train``)."""


def run() -> None:
  """The ``attnlab-train`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.train import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
