"""``dicomrelay pki``: the certificates organisations prove themselves with.

``pki ca`` makes a certificate authority (the exchange's, or a test one);
``pki issue ORG`` issues an organisation's key and certificate from it, with
the subject alternative name ``<org>.org.dicomrelay`` a node checks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dicomrelay.cli.operator_errors import positive_int


def register(sub: Any) -> None:
    pki = sub.add_parser("pki", help="make a CA and issue organisations' certificates")
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    ca = commands.add_parser(
        "ca",
        help="make a certificate authority: ca.pem and ca-key.pem",
        description="Make a certificate authority (an EC P-256 key and a self-signed "
        "certificate) in DIR: ca.pem, which every node trusts, and ca-key.pem, which "
        "issues certificates and stays with whoever issues them. Existing files are "
        "never overwritten.",
    )
    ca.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    ca.add_argument("--name", default="dicomrelay CA", help="the CA's common name")
    ca.add_argument("--days", type=positive_int, default=3650, help="validity (default 3650)")
    ca.set_defaults(run=run_ca)

    issue = commands.add_parser(
        "issue",
        help="issue an organisation's key and certificate: ORG.pem and ORG-key.pem",
        description="Issue ORG's key and certificate from the CA in --ca, naming the "
        "organisation in the subject alternative name <org>.org.dicomrelay that nodes "
        "check, and print the [tls] table of the node's configuration. Existing files "
        "are never overwritten.",
    )
    issue.add_argument("org", metavar="ORG", help="the organisation's code, e.g. RX1")
    issue.add_argument("--ca", type=Path, required=True, metavar="DIR", help="from `pki ca`")
    issue.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    issue.add_argument("--days", type=positive_int, default=825, help="validity (default 825)")
    issue.set_defaults(run=run_issue)


def run_ca(args: argparse.Namespace) -> int:
    from dicomrelay import pki

    cert = pki.make_ca(args.out, args.name, args.days, replace=False)
    sys.stdout.write(
        f"CA certificate {cert} (give it to every node: [tls] ca)\n"
        f"CA key         {cert.parent / pki.CA_KEY} (keep it where certificates are issued)\n"
    )
    return 0


def run_issue(args: argparse.Namespace) -> int:
    from dicomrelay import pki
    from dicomrelay.errors import ConfigurationError, UsageError

    try:
        pki.check_org_code(args.org)
    except ConfigurationError as e:
        raise UsageError(str(e)) from None
    identity = pki.issue_org(args.ca, args.org, args.out, args.days, replace=False)
    sys.stdout.write(
        f"{identity.code}: certificate {identity.cert}, key {identity.key}"
        f" (subject alternative name {pki.server_name(identity.code)})\n"
        "[tls]\n"
        f'cert = "{os.fspath(identity.cert)}"\n'
        f'key = "{os.fspath(identity.key)}"\n'
        f'ca = "{os.fspath(identity.ca.resolve())}"\n'
    )
    return 0
