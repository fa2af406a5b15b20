"""Command-line entry points, thin over the library: each defines its flags and calls one
library function (``attnlab.engine``, ``attnlab.inference``, ``attnlab.analysis``). Nothing
imports them but the ``python -m attnlab.<name>`` shims beside the packages."""
