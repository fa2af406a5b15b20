"""``python -m attnlab.memory`` (or ``attnlab-memory``): the KV-cache memory report
(``attnlab.cli.memory``)."""


def run() -> None:
  """The ``attnlab-memory`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.memory import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
