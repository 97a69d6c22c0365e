"""`make bench`: load the contacts service and a bare grpcio baseline with h2load (gRPC)
and wrk (REST through Envoy), on SQLite and PostgreSQL, and print how they compare.

    run.py        the command line: the stacks, the rows, results.json
    calls.py      the measured calls in both forms; seeding; checking replies
    load.py       h2load and wrk: running them, reading their output
    report.py     the table and the targets
    performance.py  docs/performance.md's numbers, rendered from results.json
    baseline.py   the bare grpcio server the service is measured against
    limiter.py    the rate limiter alone under a flood of clients (`python -m bench.limiter`)

Processes, ports and databases come from tests/harness.py, as for the tests.
"""
