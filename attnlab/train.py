"""``python -m attnlab.train``: the trainer (``attnlab.cli.train``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.train import define_flags, main
  common.run(main, define_flags)
