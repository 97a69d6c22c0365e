"""`make bench`: load the contacts service (gRPC direct and REST through Envoy) and a
bare grpcio baseline with h2load and wrk, and print how they compare; the same
with several worker processes, at 1,000 and 1,000,000 rows, and the memory the
server holds.

Run it as `python -m bench` from the project root; `python -m bench --help` lists
the knobs. Modules:

    run.py        the command line: scenarios, the tables, results.json
    measure.py    one scenario: start, prepare, drive each call, read the memory
    workload.py   what is measured: the contact the seed writes, the calls, their bodies
    processes.py  starting and stopping the server, the baseline and Envoy on free ports
    procfs.py     /proc: a server's worker processes, their memory, CPU time and sockets
    scale.py      seeding a database before the server starts; the deep page in SQLite
    loadgen.py    h2load and wrk: installing, running, parsing their output
    api.py        a small REST and gRPC client, for seeding and for checking replies
    baseline.py   the bare grpcio server the service is measured against
    report.py     the tables and the targets of the spec
    limiter.py    the rate limiter alone under a flood of clients (`python -m bench.limiter`)
"""
