"""Command line: `python -m server run|serve|envoy|migrate|seed|envoy-config|token`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from pathlib import Path

from server.observability import logs
from server.settings import Settings, SettingsError

# Each command imports what it runs: the supervisor's process (`run`, `serve`)
# never loads the serving code (grpc, peewee, the drivers) its workers run.


def envoy_config(
    settings: Settings, validate: bool, alone: bool, output: Path | None, root: Path | None
) -> int:
    from server.process import stack
    from server.settings import PROJECT_ROOT

    servers = stack.upstreams_of(settings) if alone else stack.endpoints_file(settings)
    path = stack.write_envoy_config(settings, servers, path=output, root=root or PROJECT_ROOT)
    if validate:
        stack.validate_envoy_config(path)
        print(f"{path}: valid")
    else:
        print(path)
    return 0


def migrate(settings: Settings) -> int:
    from server.data import migrations
    from server.data.database import open_database

    db = open_database(settings.database_url, max_connections=1)
    with db.connection_context():
        applied = migrations.migrate(db)
        versions = migrations.applied_versions(db)
    print(f"applied {applied or 'nothing'}; the schema is at version {max(versions)}")
    return 0


def seed(settings: Settings, contacts: int, owner: str) -> int:
    from server.data.store import Store

    store = Store.open(settings.database_url, max_connections=1)
    company = store.create_company(f"Seeded ({contacts} contacts)", owner_id=owner)
    started = time.monotonic()
    store.seed_contacts(uuid.UUID(company.id), contacts)
    took = time.monotonic() - started
    store.close()
    logging.getLogger("server").info("seeded %d contacts in %.1f s", contacts, took)
    print(company.id)
    return 0


def token(settings: Settings, sub: str, superuser: bool, lifetime: int) -> int:
    from server.auth.tokens import Tokens

    if settings.oidc:
        print(
            f"CONTACTS_OIDC_ISSUER is set: tokens come from {settings.oidc_issuer}, not from here",
            file=sys.stderr,
        )
        return 2
    try:
        print(Tokens(settings.jwt_secret).issue(sub, superuser=superuser, lifetime=lifetime))
    except ValueError as error:
        print(f"--lifetime: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("run", "the gRPC server and Envoy"), ("serve", "the gRPC server alone")):
        command = commands.add_parser(name, help=f"{what}, in the foreground")
        command.add_argument(
            "--workers", type=int, default=1, help="server processes sharing the gRPC port"
        )
        # A worker started by the supervisor: its pid, where to say it serves,
        # and Envoy's door (a Unix socket of its own, under `run`).
        command.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        command.add_argument("--parent", type=int, help=argparse.SUPPRESS)
        command.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
        command.add_argument("--proxy-socket", help=argparse.SUPPRESS)
    envoy = commands.add_parser("envoy", help="Envoy alone, in front of CONTACTS_UPSTREAMS")
    envoy.add_argument(
        "--config", type=Path, help="a config envoy-config rendered (default: render one now)"
    )
    config = commands.add_parser("envoy-config", help="render run's Envoy config into data/")
    config.add_argument("--validate", action="store_true", help="and check it with envoy")
    config.add_argument("--alone", action="store_true", help="`envoy`'s config instead")
    config.add_argument("--output", type=Path, help="write it here instead of data/")
    config.add_argument(
        "--root", type=Path, help="where the project is where Envoy runs (default: here)"
    )
    commands.add_parser("migrate", help="bring the database schema to the latest version")
    seeder = commands.add_parser("seed", help="a company with N generated contacts; prints its id")
    seeder.add_argument("--contacts", type=int, default=1000)
    seeder.add_argument("--owner", default="seed", help="the owning user's sub (default: seed)")
    tok = commands.add_parser("token", help="print a bearer token signed with the secret")
    tok.add_argument("--sub", required=True, help="the user id the token names")
    tok.add_argument("--superuser", action="store_true")
    tok.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    args = parser.parse_args(argv)
    # What the service writes (the SQLite database and its journal, Envoy's
    # config, the secret) is its own user's alone; its workers inherit this.
    os.umask(0o077)

    logs.configure()  # until the settings say which format and level
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    try:
        if args.command in ("run", "serve") and args.worker:
            from server.process import worker

            return worker.serve(settings, args.parent, args.ready_fd, args.proxy_socket)
        from server.process import stack

        if args.command in ("run", "serve"):
            return stack.run(settings, args.workers, envoy=args.command == "run")
        if args.command == "envoy":
            return stack.run(settings, workers=0, envoy=True, envoy_config=args.config)
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a port taken, say
        logging.getLogger("server").error("cannot start: %s", error)
        return 1
    if args.command == "seed":
        return seed(settings, args.contacts, args.owner)
    if args.command == "migrate":
        return migrate(settings)
    if args.command == "envoy-config":
        return envoy_config(settings, args.validate, args.alone, args.output, args.root)
    return token(settings, args.sub, args.superuser, args.lifetime)


if __name__ == "__main__":
    sys.exit(main())
