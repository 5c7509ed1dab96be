"""`agp keys`: make, enroll, revoke and list the identities of a mesh (in AGP_HOME)."""

from __future__ import annotations

import argparse
import secrets
import sys

from mesh.errors import Error
from security.home import bind, enroll_identity, ensure_router, open_home


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agp keys", description=__doc__)
    p.add_argument("--home", default=None, help="AGP_HOME (default ~/.agp)")
    sub = p.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser("new", help="keypair + enrolment + OAuth2 client for NAME")
    new.add_argument("name")
    new.add_argument("--roles", default="client", help="comma list (default: client)")
    new.add_argument("--namespace", default=None, help="namespace the identity may register in")
    new.add_argument("--force", action="store_true",
                     help="replace the keypair of NAME (`revoke` the enrolled one first)")
    enroll = sub.add_parser("enroll", help="trust a public key made elsewhere")
    enroll.add_argument("name")
    enroll.add_argument("public_key", help="z85 public key (40 characters)")
    revoke = sub.add_parser("revoke", help="stop trusting NAME or KEY; its connections end")
    revoke.add_argument("name_or_key")
    revoke.add_argument("--reason", default="")
    sub.add_parser("list", help="enrolled and revoked keys")
    args = p.parse_args(argv)
    home = open_home(args.home)
    try:
        ensure_router(home)
        if args.cmd == "new":
            roles = tuple(r for r in args.roles.split(",") if r)
            secret = secrets.token_urlsafe(24)  # stored hashed: shown here once
            kp = enroll_identity(home, args.name, roles=roles, namespace=args.namespace,
                                 overwrite=args.force, secret=secret)
            if args.namespace is None and "agent" in roles:
                bind(home, args.name, roles, {"ns": f"agp/{args.name}"})
            print(f"{args.name}: {kp.public.decode()}  (keys in {home.keys}, mode 0600)")
            print(f"OAuth2 client {args.name!r} secret, shown once (for POST /oauth2/token, "
                  f"the client-credentials grant): {secret}")
        elif args.cmd == "enroll":
            home.trust().enroll(args.name, args.public_key)
            print(f"enrolled {args.name}")
        elif args.cmd == "revoke":
            key = home.trust().revoke(args.name_or_key, reason=args.reason)
            print(f"revoked {key.decode()}: new connections are refused, open ones end "
                  "within seconds")
        else:
            trust = home.trust()
            for k in trust.list():
                print(f"trusted  {k.name:<24} {k.public.decode()}")
            for r in trust.revoked():
                print(f"revoked  {r.name or '-':<24} {r.public.decode()}  {r.reason}")
    except Error as exc:
        print(f"agp keys: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
