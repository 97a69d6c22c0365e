"""`make bench`: load the contacts service (gRPC direct and REST through Envoy) and a
bare grpcio baseline with h2load and wrk, and print how they compare.

Run it as `python -m bench` from the project root; `python -m bench --help` lists
the knobs. Modules:

    run.py        the command line: scenarios, the table, results.json
    workload.py   what is measured: the contact the seed writes, the calls, their bodies
    processes.py  starting and stopping the server, the baseline and Envoy on free ports
    loadgen.py    h2load and wrk: installing, running, parsing their output
    api.py        a small REST and gRPC client, for seeding and for checking replies
    baseline.py   the bare grpcio server the service is measured against
    report.py     the table and the targets of the spec
"""
