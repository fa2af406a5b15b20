"""``python -m attnlab.evaluate``: evaluation by length (``attnlab.cli.evaluate``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.evaluate import define_flags, main
  common.run(main, define_flags)
