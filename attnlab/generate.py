"""``python -m attnlab.generate`` (or ``attnlab-generate``): text generation
(``attnlab.cli.generate``)."""


def run() -> None:
  """The ``attnlab-generate`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.generate import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
