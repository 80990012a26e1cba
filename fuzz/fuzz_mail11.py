"""Coverage-guided fuzzing of the VMS MAIL extract parser and header rebuilding (atheris).

    .venv/bin/python fuzz/fuzz_mail11.py fuzz/corpus/mail11 -max_total_time=60

The importer must turn any bytes into messages or reported malformed messages,
never an unexpected exception.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    import atheris  # only the fuzzing run needs it; tests replay the corpus without it

    with atheris.instrument_imports():
        from vmspop import mail11
else:
    from vmspop import mail11


OPTIONS = [
    mail11.RewriteOptions(hostname="orders.acme.widgets.com"),
    mail11.RewriteOptions(hostname="orders.acme.widgets.com", substitute_domain="acme.widgets.com",
                          decnet_rewrite="generic", quoted_decnet_rewrite="none",
                          decnet_nodes={"ORDERS": "orders.acme.widgets.com"}, personal_name=True,
                          ignore_mail11_headers=True),
]


def test_one_input(data: bytes) -> None:
    # Any split of the input into blocks must parse; every well-formed message must render.
    half = len(data) // 2
    for message in mail11.read_extract([data[:half], data[half:]]):
        if message.error is not None:
            assert message.error_line is not None
            continue
        for options in OPTIONS:
            rendered = mail11.render(message, options, fallback_arrival=0.0)
            assert rendered.data.endswith(b"\n") or rendered.data == b""


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
