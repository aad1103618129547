"""DICOM TLS (PS3.15 Annex B, BCP 195 non-downgrading profile) against real
DCMTK peers with real certificates: DCMTK storescu and echoscu into our
storescp, our storescu and echoscu into DCMTK's storescp, and the refusals a
secure peer owes: a client certificate from another CA, a server certificate
from an untrusted CA, a plaintext caller, a TLS 1.1 caller."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import pytest

from dicomrelay import scan_file, synth
from dicomrelay.dicom.scu import Client
from dicomrelay.dicom.tls import BCP195_TLS12_CIPHERS, client_context, server_context
from dicomrelay.errors import ConfigurationError, TlsError
from peers import DCMTK, dicomrelay_command, free_port, listening, run
from tls_certificates import Pem, Pki, make_pki

pytestmark = pytest.mark.skipif(not (DCMTK / "storescp").exists(), reason="DCMTK not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- peers -----------------------------------------------------------------


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(DCMTK / tool), *args])


def dicomrelay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run(dicomrelay_command(*args))


def dataset(path: Path) -> bytes:
    return path.read_bytes()[scan_file(path).dataset_offset :]


def stored(out: Path) -> dict[str, Path]:
    """Received instances by SOP Instance UID (ours names them .dcm, DCMTK's MR.<uid>)."""
    files = [p for p in out.iterdir() if p.is_file() and p.suffix != ".jsonl"]  # not our logs
    return {scan_file(p).sop_instance_uid or "": p for p in files}


def assert_intact(study: Path, out: Path) -> None:
    got = stored(out)
    sources = sorted(study.iterdir())
    assert len(got) == len(sources)
    for source in sources:
        assert dataset(got[scan_file(source).sop_instance_uid or ""]) == dataset(source)


@dataclass(frozen=True)
class Server:
    port: int
    out: Path


@pytest.fixture
def our_scp(pki: Pki, tmp_path: Path) -> Iterator[Server]:
    """``dicomrelay storescp +tls``: mutual TLS, accepting STORESCU and DICOMRELAY."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    command += [*pki.server.tls, *pki.trust, "--host", "127.0.0.1"]
    command += ["--allow", "STORESCU", "--allow", "ECHOSCU", "--allow", "DICOMRELAY"]
    with listening(command, port):
        yield Server(port, out)


def dcmtk_storescp(port: int, out: Path, identity: Pem, pki: Pki) -> list[str]:
    """DCMTK storescp with TLS (default profile: BCP 195 non-downgrading,
    client certificate required), keeping every dataset bit for bit."""
    out.mkdir(exist_ok=True)
    return [
        str(DCMTK / "storescp"),
        *identity.tls,
        *pki.trust,
        "-od",
        str(out),
        "-aet",
        "STORESCP",
        "-pm",
        "+xa",
        "+B",
        str(port),
    ]


@pytest.fixture
def their_scp(pki: Pki, tmp_path: Path) -> Iterator[Server]:
    port, out = free_port(), tmp_path / "dcmtk-received"
    with listening(dcmtk_storescp(port, out, pki.server, pki), port):
        yield Server(port, out)


def to(server: Server, called: str) -> list[str]:
    return ["-aec", called, "127.0.0.1", str(server.port)]


# --- DCMTK into our SCP ------------------------------------------------------


def test_dcmtk_storescu_into_our_tls_scp(our_scp: Server, pki: Pki, tmp_path: Path) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 5)
    tls = [*pki.client.tls, *pki.trust]
    result = dcmtk("storescu", *tls, "-aet", "STORESCU", *to(our_scp, "RELAY"), "+sd", str(study))
    assert result.returncode == 0, result.stderr
    assert_intact(study, our_scp.out)
    echo = dcmtk("echoscu", *tls, "-aet", "ECHOSCU", *to(our_scp, "RELAY"))
    assert echo.returncode == 0, echo.stderr


def test_a_plaintext_caller_is_refused_cleanly(our_scp: Server, pki: Pki, tmp_path: Path) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    plain = dcmtk("storescu", "-aet", "STORESCU", *to(our_scp, "RELAY"), "+sd", str(study))
    assert plain.returncode != 0
    ours = dicomrelay_cli("echoscu", *to(our_scp, "RELAY"), "-to", "10")
    assert ours.returncode == 1
    assert ours.stderr.startswith("dicomrelay echoscu: ")
    assert "Traceback" not in ours.stderr
    assert stored(our_scp.out) == {}
    good = dicomrelay_cli("echoscu", *to(our_scp, "RELAY"), *pki.client.tls, *pki.trust)
    assert good.returncode == 0, good.stderr


def test_a_client_certificate_from_another_ca_is_refused(
    our_scp: Server, pki: Pki, tmp_path: Path
) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 3)
    # The rogue client trusts our CA, so only its own certificate can fail.
    rogue = dcmtk(
        "storescu",
        *pki.rogue_client.tls,
        *pki.trust,
        "-aet",
        "STORESCU",
        *to(our_scp, "RELAY"),
        "+sd",
        str(study),
    )
    assert rogue.returncode != 0
    ours = dicomrelay_cli(
        "storescu", *to(our_scp, "RELAY"), str(study), *pki.rogue_client.tls, *pki.trust
    )
    assert ours.returncode == 1
    assert "has it refused our certificate?" in ours.stderr  # no alert: see StoreScp._handshake
    anonymous = dicomrelay_cli("echoscu", *to(our_scp, "RELAY"), "+tla", *pki.trust)
    assert anonymous.returncode == 1
    assert "has it refused our certificate?" in anonymous.stderr
    assert stored(our_scp.out) == {}
    good = dcmtk(
        "storescu",
        *pki.client.tls,
        *pki.trust,
        "-aet",
        "STORESCU",
        *to(our_scp, "RELAY"),
        "+sd",
        str(study),
    )
    assert good.returncode == 0, good.stderr
    assert_intact(study, our_scp.out)


def test_without_required_client_certificates(pki: Pki, tmp_path: Path) -> None:
    """``-vc``: a client without a certificate is served; one with a
    certificate from another CA is still refused."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    command += [*pki.server.tls, *pki.trust, "-vc", "--host", "127.0.0.1"]
    server = Server(port, out)
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    with listening(command, port):
        anonymous = dcmtk("storescu", "+tla", *pki.trust, *to(server, "RELAY"), "+sd", str(study))
        assert anonymous.returncode == 0, anonymous.stderr
        assert_intact(study, out)
        rogue = dicomrelay_cli("echoscu", *to(server, "RELAY"), *pki.rogue_client.tls, *pki.trust)
        assert rogue.returncode == 1
    [refused] = [orjson.loads(line) for line in (out / "refused.jsonl").read_bytes().splitlines()]
    assert (refused["what"], refused["calling_ae_title"]) == ("tls", None)
    assert "certificate" in refused["reason"], refused["reason"]


# --- our SCU into DCMTK's SCP ------------------------------------------------


def test_our_storescu_and_echoscu_into_dcmtk_tls_storescp(
    their_scp: Server, pki: Pki, tmp_path: Path
) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 5)
    tls = [*pki.client.tls, *pki.trust]
    result = dicomrelay_cli("storescu", *to(their_scp, "STORESCP"), str(study), *tls)
    assert result.returncode == 0, result.stderr
    assert_intact(study, their_scp.out)
    echo = dicomrelay_cli("echoscu", *to(their_scp, "STORESCP"), *tls)
    assert echo.returncode == 0, echo.stderr
    assert "0x0000" in echo.stdout


def test_dcmtk_refuses_our_scu_without_a_certificate(their_scp: Server, pki: Pki) -> None:
    result = dicomrelay_cli("echoscu", *to(their_scp, "STORESCP"), "+tla", *pki.trust)
    assert result.returncode == 1
    assert result.stderr.startswith("dicomrelay echoscu: ")
    assert "Traceback" not in result.stderr


def test_our_scu_refuses_a_server_from_an_untrusted_ca(pki: Pki, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "dcmtk-received"
    server = Server(port, out)
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    # The rogue server trusts our CA: it would take our client certificate.
    with listening(dcmtk_storescp(port, out, pki.rogue_server, pki), port):
        cli = dicomrelay_cli(
            "storescu", *to(server, "STORESCP"), str(study), *pki.client.tls, *pki.trust
        )
        assert cli.returncode == 1
        assert "unable to get local issuer certificate" in cli.stderr
        assert "Traceback" not in cli.stderr

        async def echo() -> None:
            tls = client_context(
                certificate=pki.client.cert, private_key=pki.client.key, trusted_cas=[pki.ca]
            )
            async with await Client.connect(
                "127.0.0.1", port, called_ae_title="STORESCP", tls=tls, timeout=10
            ) as client:
                await client.echo()

        with pytest.raises(TlsError, match="unable to get local issuer certificate"):
            anyio.run(echo)
        # The same server is fine for a client that trusts its CA.
        trusting = dicomrelay_cli(
            "echoscu", *to(server, "STORESCP"), *pki.client.tls, "+cf", str(pki.rogue_ca)
        )
        assert trusting.returncode == 0, trusting.stderr
    assert list(out.iterdir()) == []


def test_hostname_checking_is_off_unless_asked(their_scp: Server, pki: Pki) -> None:
    """The server certificate names localhost and 127.0.0.1, not 127.0.0.2."""

    async def echo(host: str, check_hostname: bool) -> int:
        tls = client_context(
            certificate=pki.client.cert,
            private_key=pki.client.key,
            trusted_cas=[pki.ca],
            check_hostname=check_hostname,
        )
        async with await Client.connect(
            host, their_scp.port, called_ae_title="STORESCP", tls=tls, timeout=10
        ) as client:
            return await client.echo()

    assert anyio.run(echo, "127.0.0.2", False) == 0
    assert anyio.run(echo, "localhost", True) == 0
    with pytest.raises(TlsError, match="mismatch"):
        anyio.run(echo, "127.0.0.2", True)


# --- protocol versions and suites ---------------------------------------------


def _negotiate(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str, str]:
    """Handshake in memory: (protocol version, cipher suite); raises ssl.SSLError."""
    ends = []
    for context, server_side in ((client, False), (server, True)):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ends.append(
            (context.wrap_bio(incoming, outgoing, server_side=server_side), incoming, outgoing)
        )
    done = [False, False]
    for _ in range(10):
        for n, (end, _incoming, outgoing) in enumerate(ends):
            if not done[n]:
                try:
                    end.do_handshake()
                    done[n] = True
                except ssl.SSLWantReadError:
                    pass
            ends[1 - n][1].write(outgoing.read())
        if all(done):
            cipher = ends[0][0].cipher()
            assert cipher is not None
            return ends[0][0].version() or "", cipher[0]
    raise AssertionError("the handshake did not finish")


def _client_limited(
    pki: Pki, *, version: ssl.TLSVersion, ciphers: str | None = None
) -> ssl.SSLContext:
    """A client with our certificate, speaking only ``version``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.ca)
    context.load_cert_chain(pki.client.cert, pki.client.key)
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _handshake(context: ssl.SSLContext, port: int) -> tuple[str, str]:
    """Handshake with the server on ``port``: (version, cipher suite). Raises
    ssl.SSLError or ConnectionError."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version() or "", cipher[0]


def _server(pki: Pki, identity: Pem | None = None) -> ssl.SSLContext:
    identity = identity or pki.server
    return server_context(certificate=identity.cert, private_key=identity.key, trusted_cas=[pki.ca])


def test_the_profile_in_memory(pki: Pki) -> None:
    """TLS 1.3 between two BCP 195 peers; under TLS 1.2 only the profile's
    AEAD (EC)DHE suites, the server's strongest first; nothing older."""
    ours = client_context(
        certificate=pki.client.cert, private_key=pki.client.key, trusted_cas=[pki.ca]
    )
    assert _negotiate(ours, _server(pki))[0] == "TLSv1.3"
    tls12 = _client_limited(pki, version=ssl.TLSVersion.TLSv1_2)
    assert _negotiate(tls12, _server(pki)) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")
    for suite in BCP195_TLS12_CIPHERS:  # each of the four, DHE too
        client = _client_limited(pki, version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
        assert _negotiate(client, _server(pki)) == ("TLSv1.2", suite)
    for outside in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA"):
        client = _client_limited(pki, version=ssl.TLSVersion.TLSv1_2, ciphers=outside)
        with pytest.raises(ssl.SSLError, match=r"NO_SHARED_CIPHER|HANDSHAKE_FAILURE"):
            _negotiate(client, _server(pki))
    # With an ECDSA certificate the profile leaves no TLS 1.2 suite: TLS 1.3 only.
    ecdsa = _server(pki, pki.ecdsa_server)
    assert _negotiate(ours, ecdsa)[0] == "TLSv1.3"
    with pytest.raises(ssl.SSLError, match=r"NO_SHARED_CIPHER|HANDSHAKE_FAILURE"):
        _negotiate(tls12, ecdsa)


def test_contexts_refuse_unusable_configuration(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="trusted CA"):
        server_context(certificate=pki.server.cert, private_key=pki.server.key, trusted_cas=[])
    with pytest.raises(ConfigurationError, match="trusted CA"):
        client_context(certificate=None, private_key=None, trusted_cas=[])
    with pytest.raises(ConfigurationError, match="cannot use certificate"):
        server_context(
            certificate=pki.server.cert, private_key=pki.client.key, trusted_cas=[pki.ca]
        )
    with pytest.raises(ConfigurationError, match="cannot read trusted CA"):
        client_context(certificate=None, private_key=None, trusted_cas=[tmp_path / "absent.pem"])
    no_cf = dicomrelay_cli("storescp", "0", "-od", str(tmp_path / "out"), *pki.server.tls)
    assert no_cf.returncode == 2
    assert "trusted CA" in no_cf.stderr


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_client_is_refused(our_scp: Server, their_scp: Server, pki: Pki) -> None:
    tls11 = _client_limited(pki, version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    # First, that this OpenSSL can offer TLS 1.1 at all: a server allowing it agrees.
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lenient.minimum_version = ssl.TLSVersion.TLSv1_1
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    lenient.load_cert_chain(pki.server.cert, pki.server.key)
    try:
        version = _negotiate(tls11, lenient)[0]
    except ssl.SSLError as e:
        pytest.skip(f"{ssl.OPENSSL_VERSION} cannot negotiate TLS 1.1 even when allowed: {e}")
    assert version == "TLSv1.1"
    with pytest.raises(ssl.SSLError, match=r"UNSUPPORTED_PROTOCOL|PROTOCOL_VERSION"):
        _negotiate(tls11, _server(pki))
    # Our SCP closes without a word (anyio drops the alert), DCMTK sends protocol_version.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(tls11, our_scp.port)
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        _handshake(tls11, their_scp.port)
    # Both go on serving a BCP 195 client, over TLS 1.3, or TLS 1.2 when it must.
    tls13 = _client_limited(pki, version=ssl.TLSVersion.TLSv1_3)
    tls12 = _client_limited(pki, version=ssl.TLSVersion.TLSv1_2)
    for server in (our_scp, their_scp):
        assert _handshake(tls13, server.port)[0] == "TLSv1.3"
        assert _handshake(tls12, server.port)[0] == "TLSv1.2"
    assert stored(our_scp.out) == {}


def test_an_ecdsa_server_certificate_works_over_tls_1_3(pki: Pki, tmp_path: Path) -> None:
    """DCMTK's TLS 1.2 suites under the profile are all RSA; TLS 1.3 carries ECDSA."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    command += [*pki.ecdsa_server.tls, *pki.trust, "--host", "127.0.0.1"]
    with listening(command, port):
        echo = dcmtk("echoscu", *pki.client.tls, *pki.trust, *to(Server(port, out), "RELAY"))
        assert echo.returncode == 0, echo.stderr
