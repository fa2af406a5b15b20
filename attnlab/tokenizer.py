"""``python -m attnlab.tokenizer`` (or ``attnlab-tokenizer``): train a BPE tokenizer.json
(``attnlab.cli.tokenizer``)."""


def run() -> None:
  """The ``attnlab-tokenizer`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.tokenizer import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
