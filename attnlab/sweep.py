"""``python -m attnlab.sweep``: the experiment runner (``attnlab.cli.sweep``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.sweep import define_flags, main
  common.run(main, define_flags)
