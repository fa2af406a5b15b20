"""``python -m attnlab.evaluate`` (or ``attnlab-evaluate``): evaluation by length
(``attnlab.cli.evaluate``)."""


def run() -> None:
  """The ``attnlab-evaluate`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.evaluate import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
