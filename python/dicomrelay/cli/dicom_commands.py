"""``dicomrelay echoscu``, ``storescu`` and ``storescp``: the DCMTK tools a PACS
administrator knows, with DCMTK-like arguments (``+tls KEY CERT``, ``+cf CA``
for TLS, as DCMTK spells them)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from dicomrelay import InstanceInfo, event_loop, scan_many
from dicomrelay.cli.scan_command import files_under
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.scu import AssociationError, Client, contexts_for
from dicomrelay.dicom.tls import client_context, server_context
from dicomrelay.errors import ConfigurationError, DicomrelayError, UsageError


def register(sub: Any) -> None:
    echo = sub.add_parser("echoscu", help="DICOM verification (C-ECHO) SCU", prefix_chars="-+")
    _common(echo)
    echo.set_defaults(run=run_echo)

    store = sub.add_parser("storescu", help="DICOM storage (C-STORE) SCU", prefix_chars="-+")
    _common(store)
    store.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursed)")
    store.set_defaults(run=run_store)

    scp = sub.add_parser(
        "storescp", help="DICOM storage (C-STORE) SCP writing Part 10 files", prefix_chars="-+"
    )
    scp.add_argument("port", type=int)
    scp.add_argument("--output-dir", "-od", type=Path, required=True, metavar="DIR")
    scp.add_argument("-aet", "--aetitle", default="DICOMRELAY", help="this SCP's AE title")
    scp.add_argument(
        "--allow", action="append", metavar="AE", help="accept only these calling AE titles"
    )
    scp.add_argument(
        "--require-called-aet",
        action="store_true",
        help="refuse associations not addressed to -aet (default: accept any called AE "
        "title, as DCMTK's storescp does)",
    )
    scp.add_argument("--host", default="0.0.0.0", help="address to listen on")
    scp.add_argument(
        "--sync-each",
        action="store_true",
        help="answer each C-STORE only once its instance is durable (default: each "
        "association's release waits until all it stored is durable)",
    )
    scp.add_argument(
        "--digest",
        choices=("sha256", "blake3"),
        default="sha256",
        help="digest each received file with this, for the received log (default: sha256)",
    )
    tls = _tls_options(scp)
    peer = tls.add_mutually_exclusive_group()
    peer.add_argument(
        "-rc",
        "--require-peer-cert",
        dest="require_peer_cert",
        action="store_true",
        default=True,
        help="refuse a client without a certificate from a +cf CA (default)",
    )
    peer.add_argument(
        "-vc",
        "--verify-peer-cert",
        dest="require_peer_cert",
        action="store_false",
        help="accept a client without a certificate (one it presents is still verified)",
    )
    scp.set_defaults(run=run_scp)


def _tls_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    tls = p.add_argument_group("transport layer security (BCP 195 non-downgrading profile)")
    tls.add_argument(
        "+tls",
        "--enable-tls",
        nargs=2,
        metavar=("KEY", "CERT"),
        type=Path,
        help="use TLS with this private key and certificate (PEM files)",
    )
    tls.add_argument(
        "+cf",
        "--add-cert-file",
        dest="trusted_cas",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="trust the CA certificates in FILE (PEM) to verify the peer; repeatable",
    )
    return tls


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("-aet", "--aetitle", default="DICOMRELAY", help="calling AE title")
    p.add_argument("-aec", "--call", default="ANY-SCP", help="called AE title")
    p.add_argument("-to", "--timeout", type=float, default=30.0, help="connection timeout (s)")
    tls = _tls_options(p)
    tls.add_argument(
        "+tla",
        "--anonymous-tls",
        action="store_true",
        help="use TLS without a certificate of our own (the server's is still verified)",
    )
    tls.add_argument(
        "--check-hostname",
        action="store_true",
        help="also require the server's certificate to name HOST",
    )


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the SCU options ask for (None: plain TCP). Raises ConfigurationError."""
    if args.enable_tls is None and not args.anonymous_tls:
        if args.trusted_cas or args.check_hostname:
            raise ConfigurationError("+cf and --check-hostname need +tls or +tla")
        return None
    if args.enable_tls is not None and args.anonymous_tls:
        raise ConfigurationError("+tls and +tla exclude each other")
    key, cert = args.enable_tls or (None, None)
    return client_context(
        certificate=cert,
        private_key=key,
        trusted_cas=args.trusted_cas,
        check_hostname=args.check_hostname,
    )


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the SCP options ask for (None: plain TCP). Raises ConfigurationError."""
    if args.enable_tls is None:
        if args.trusted_cas:
            raise ConfigurationError("+cf needs +tls")
        return None
    key, cert = args.enable_tls
    return server_context(
        certificate=cert,
        private_key=key,
        trusted_cas=args.trusted_cas,
        require_peer_certificate=args.require_peer_cert,
    )


def run_echo(args: argparse.Namespace) -> int:
    try:
        tls = _client_tls(args)
    except ConfigurationError as e:
        raise UsageError(str(e)) from e  # exit status 2

    async def echo() -> int:
        async with await Client.connect(
            args.host,
            args.port,
            calling_ae_title=args.aetitle,
            called_ae_title=args.call,
            timeout=args.timeout,
            tls=tls,
        ) as client:
            return await client.echo()

    # A failure (PeerUnreachable, AssociationError, TlsError) is one line, by main.
    status = event_loop.run(echo)
    sys.stdout.write(f"C-ECHO status {status:#06x}\n")
    return 0 if status == Status.SUCCESS else 1


def run_store(args: argparse.Namespace) -> int:
    try:
        tls = _client_tls(args)
    except ConfigurationError as e:
        raise UsageError(str(e)) from e  # exit status 2
    for given in args.paths:
        if not os.path.exists(given):
            raise UsageError(f"{given}: no such file or directory")
    paths = list(files_under(args.paths))
    scanned = scan_many(paths)
    files: list[tuple[str, InstanceInfo]] = []
    for path, info in zip(paths, scanned, strict=True):
        if isinstance(info, InstanceInfo) and info.sop_class_uid and info.sop_instance_uid:
            files.append((path, info))
        else:
            sys.stderr.write(
                f"dicomrelay storescu: skipping {path}: not a DICOM instance ({info})\n"
            )
    if not files:
        given = args.paths[0] if len(args.paths) == 1 else f"the {len(args.paths)} paths given"
        raise DicomrelayError(f"nothing to send: no DICOM instance in {given}")

    async def store() -> int:
        answered = failed = 0
        async with await Client.connect(
            args.host,
            args.port,
            calling_ae_title=args.aetitle,
            called_ae_title=args.call,
            contexts=contexts_for([i for _, i in files]),
            timeout=args.timeout,
            tls=tls,
        ) as client:
            try:
                async for path, status in client.store_many(files):
                    answered += 1
                    if isinstance(status, Exception):
                        sys.stderr.write(
                            f"dicomrelay storescu: {os.path.basename(path)}: {status}\n"
                        )
                        failed += 1
                    elif status != Status.SUCCESS:
                        failed += 1
                        sys.stderr.write(f"dicomrelay storescu: {path}: status {status:#06x}\n")
            except AssociationError as e:
                # One request is outstanding at a time: the association ended
                # on the first file not answered.
                refused = f" ({failed} refused)" if failed else ""
                raise AssociationError(
                    f"{e} while sending {files[answered][0]}: {answered} of {len(files)}"
                    f" sent{refused}, {len(files) - answered} not sent"
                ) from e
        return failed

    # A failure (PeerUnreachable, AssociationError, TlsError) is one line, by main.
    t0 = time.perf_counter()
    failed = event_loop.run(store)
    seconds = time.perf_counter() - t0
    sent = len(files) - failed
    sys.stdout.write(f"sent {sent} of {len(files)} in {seconds:.2f} s\n")
    return 0 if failed == 0 else 1


def run_scp(args: argparse.Namespace) -> int:
    from dicomrelay.dicom.received_log import RECEIVED_LOG, REFUSED_LOG, ReceivedLog, RefusedLog
    from dicomrelay.dicom.scp import StoreScp

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        tls = _server_tls(args)
    except ConfigurationError as e:
        raise UsageError(str(e)) from e  # exit status 2
    scp = StoreScp(
        ae_title=args.aetitle,
        output_dir=args.output_dir,
        quarantine_dir=args.output_dir / "quarantine",
        allowed_calling=frozenset(args.allow) if args.allow else None,
        require_called_ae_title=args.require_called_aet,
        on_association_end=ReceivedLog(args.output_dir / RECEIVED_LOG, args.digest).append,
        on_refusal=RefusedLog(args.output_dir / REFUSED_LOG).append,
        digest=args.digest,
        sync_each_instance=args.sync_each,
        tls=tls,
    )

    def ready(port: int) -> None:
        logging.getLogger("dicomrelay.scp").info(
            "storescp %s listening on port %d%s", args.aetitle, port, " (TLS)" if tls else ""
        )

    async def serve() -> None:
        await scp.serve(args.host, args.port, ready=ready)

    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM or SIGINT: stopped
        event_loop.run(serve)
    return 0
