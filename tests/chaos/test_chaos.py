"""The chaos suite, short: every fault kind on a 3-node nats-server cluster while jobs flow;
nothing lost, nothing duplicated, usage counted once (see `tests/chaos/run.py`; the full run is
`just chaos --cluster 3`). Secured, as `dim up` runs: every process over TLS as its own NATS
identity, mutual TLS on the cluster's routes."""

from __future__ import annotations

import pytest

from tests.chaos.run import main, parser


@pytest.mark.timeout(300)
async def test_every_fault_kind_loses_and_duplicates_nothing() -> None:
    args = parser().parse_args(
        ["--jobs", "120", "--seconds", "20", "--every", "2.5", "--cluster", "3"]
    )
    assert await main(args) == 0
