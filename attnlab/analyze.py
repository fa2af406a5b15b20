"""``python -m attnlab.analyze`` (or ``attnlab-analyze``): attention analysis
(``attnlab.cli.analyze``)."""


def run() -> None:
  """The ``attnlab-analyze`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.analyze import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
