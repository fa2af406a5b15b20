"""``python -m attnlab.retrieval`` (or ``attnlab-retrieval``): the retrieval study
(``attnlab.cli.retrieval``)."""


def run() -> None:
  """The ``attnlab-retrieval`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.retrieval import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
