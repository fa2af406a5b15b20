"""``python -m attnlab.analyze``: attention analysis (``attnlab.cli.analyze``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.analyze import define_flags, main
  common.run(main, define_flags)
