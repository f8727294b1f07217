"""`tunelog`: operator commands (serve, migrate, keys, replay, verify, events)."""
from __future__ import annotations

import argparse
import json
import sys


def _db() -> str:
    import os

    url = os.environ.get("DATABASE_URL")
    if not url:
        from pathlib import Path

        from eventlog.embedded import EmbeddedPostgres
        from eventlog.settings import ROOT

        data = Path(os.environ.get("TUNELOG_DATA_DIR") or ROOT / ".data")
        pg = EmbeddedPostgres(data / "pg")
        if not pg.running():
            sys.exit("DATABASE_URL is not set and the embedded Postgres is not running (start scripts/serve)")
        url = pg.url
    return url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tunelog", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="run the whole service (what scripts/serve runs)")
    sub.add_parser("migrate", help="alembic upgrade head")
    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (shown once)")
    kc.add_argument("--role", choices=["admin", "trainer", "viewer"], default="trainer")
    kc.add_argument("--project", default="default")
    kc.add_argument("--name", default=None)
    sub.add_parser("replay", help="rebuild every read model from the log aside, then swap it in (reads go on)")
    sub.add_parser("verify", help="rebuild aside and print how the live read models differ (should be none)")
    ev = sub.add_parser("events", help="print the log as JSON lines")
    ev.add_argument("--after", type=int, default=0)
    ev.add_argument("--limit", type=int, default=100)
    ev.add_argument("--stream", default=None)
    args = ap.parse_args(argv)

    if args.cmd == "serve":
        from eventlog.supervisor import main as serve

        return serve()
    if args.cmd == "migrate":
        from eventlog.supervisor import migrate

        migrate(_db())
        return 0
    if args.cmd == "keys":
        from api.auth import new_key
        from eventlog.keys import register_key

        key = new_key()
        kid = register_key(_db(), key, role=args.role, project=args.project, name=args.name or args.role)
        print(json.dumps({"id": kid, "key": key, "role": args.role, "project": args.project}))
        return 0
    if args.cmd in ("replay", "verify"):
        from eventlog.db import pool
        from eventlog.runner import replay, verify

        result = (replay if args.cmd == "replay" else verify)(pool(_db()))
        print(json.dumps(result, default=str))
        return 1 if args.cmd == "verify" and result["differences"] else 0
    if args.cmd == "events":
        from eventlog.db import pool
        from eventlog.store import EventStore

        store = EventStore(pool(_db()))
        for e in store.read_all(args.after, args.limit):
            if args.stream and e.stream_id != args.stream:
                continue
            print(json.dumps({"position": e.global_position, "stream": e.stream_id, "version": e.stream_version,
                              "type": e.type, "data": e.data, "metadata": e.metadata,
                              "recorded_at": e.recorded_at.isoformat()}))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
