"""``python -m attnlab.generate``: text generation (``attnlab.cli.generate``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.generate import define_flags, main
  common.run(main, define_flags)
