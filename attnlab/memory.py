"""``python -m attnlab.memory``: the KV-cache memory report (``attnlab.cli.memory``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.memory import define_flags, main
  common.run(main, define_flags)
