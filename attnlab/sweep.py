"""``python -m attnlab.sweep`` (or ``attnlab-sweep``): the experiment runner
(``attnlab.cli.sweep``)."""


def run() -> None:
  """The ``attnlab-sweep`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.sweep import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
