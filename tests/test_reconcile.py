"""Patient-ID reconciliation's decisions, tested directly: NHS numbers, the
operator's mapping (CSV file, ledger table, callable) and the order it is
matched in, the edits planned and what pydicom reads after the rewriter
applies them, and the rule's TOML."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from pathlib import Path

import anyio
import pydicom
import pytest

from dicomrelay import synth
from dicomrelay.config import NodeConfig
from dicomrelay.errors import ConfigurationError, PatientMappingError
from dicomrelay.ledger import memory_ledger
from dicomrelay.reconcile import (
    ACCESSION_NUMBER,
    INSTITUTION_NAME,
    ISSUER_OF_PATIENT_ID,
    PATIENT_ID,
    AccessionTooLong,
    CallablePatientIndex,
    CsvPatientIndex,
    ForeignPatient,
    LocalPatient,
    MatchBy,
    Reconcile,
    TablePatientIndex,
    plan_reconciliation,
    read_csv_mapping,
    valid_nhs_number,
)
from dicomrelay.rewrite import Set, rewrite

NOW = datetime.datetime(2026, 12, 3, 9, 30, 15, 250000, tzinfo=datetime.UTC)
CSV_RULE = Reconcile(csv=Path("unused.csv"))


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("9434765919", True),  # NHS Digital's example number
        ("943 476 5919", True),
        ("9434765918", False),  # wrong check digit
        ("1234567890", False),  # check digit would be 10: no valid number has it
        ("943476591", False),
        ("94347659190", False),
        ("94347659l9", False),
        ("\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19", False),  # full width
        ("", False),
    ],
)
def test_nhs_number_modulus_11(number: str, valid: bool) -> None:
    assert valid_nhs_number(number) is valid


def test_an_nhs_number_counts_only_under_an_nhs_issuer_and_when_valid() -> None:
    assert ForeignPatient(sender="A", patient_id="943 476 5919", issuer="NHS").nhs_number == (
        "9434765919"
    )
    oid = "2.16.840.1.113883.2.1.4.1"
    assert ForeignPatient(sender="A", patient_id="9434765919", issuer=oid).nhs_number
    assert ForeignPatient(sender="A", patient_id="9434765919", issuer="RXA").nhs_number is None
    assert ForeignPatient(sender="A", patient_id="9434765918", issuer="NHS").nhs_number is None


def write(tmp_path: Path, text: str, name: str = "map.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("nhs_number,local_id\n9434765919,L1\n", 1, "local_patient_id column"),
        ("local_patient_id,local_issuer\nL1,B\n", 1, "nhs_number or a patient_id"),
        ("nhs_number,local_patient_id\n9434765919,L1\n9434765918,L2\n", 3, "not a valid NHS"),
        ("nhs_number,local_patient_id\n9434765919,\n", 2, "no local_patient_id"),
        ("nhs_number,patient_id,local_patient_id\n,,L1\n", 2, "neither nhs_number"),
        ("nhs_number,local_patient_id\n9434765919,L1\n943 476 5919,L2\n", 3, "second local"),
        ("sender,patient_id,local_patient_id\nrxa,P1,L1\nRXA,P1,L2\n", 3, "second local"),
        ("nhs_number,local_patient_id\n9434765919,L1,extra\n", 2, "more fields"),
        ("patient_id,local_patient_id\nP1," + "L" * 65 + "\n", 2, "not a Patient ID"),
    ],
)
def test_csv_mistakes_are_typed_and_name_the_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PatientMappingError) as caught:
        read_csv_mapping(path)
    assert caught.value.line == line
    assert caught.value.source == str(path)
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_csv_that_is_not_text_or_not_there_is_typed(tmp_path: Path) -> None:
    with pytest.raises(PatientMappingError, match="not UTF-8"):
        read_csv_mapping(write(tmp_path, b"patient_id,local_patient_id\n\xff,L1\n"))  # type: ignore[arg-type]
    with pytest.raises(PatientMappingError, match="not CSV"):
        read_csv_mapping(write(tmp_path, 'patient_id,local_patient_id\n"P1"x,L1\n'))
    with pytest.raises(PatientMappingError, match="cannot read"):
        anyio.run(CsvPatientIndex(tmp_path / "absent.csv").find, patient("P1"), ("sender-id",))


def patient(pid: str | None, issuer: str | None = "RXA", sender: str = "RXA") -> ForeignPatient:
    return ForeignPatient(sender=sender, patient_id=pid, issuer=issuer)


MAPPING = """\ufefflocal_patient_id,local_issuer,nhs_number,sender,issuer,patient_id
B-NHS,B,9434765919,,,
B-ANY,B,,,RXA,P1
B-FROM-RXA,B,,RXA,RXA,P1
B-OTHER-ISSUER,B,,RXA,RXZ,P1
B-BOTH,,4010232137,RXA,RXA,P2
"""


@pytest.mark.anyio
async def test_matching_order_and_keys(tmp_path: Path) -> None:
    index = CsvPatientIndex(write(tmp_path, MAPPING))
    both: tuple[MatchBy, ...] = ("nhs-number", "sender-id")
    by_nhs = patient("9434765919", "NHS")
    # An NHS number is found under either order when it is the only way that matches.
    assert await index.find(by_nhs, both) == LocalPatient(patient_id="B-NHS", issuer="B")
    assert await index.find(by_nhs, ("sender-id",)) is None
    # This sender's own row wins over a row for any sender; the issuer must match.
    assert (await index.find(patient("P1"), both)).patient_id == "B-FROM-RXA"  # type: ignore[union-attr]
    assert (await index.find(patient("P1", sender="RXC"), both)).patient_id == "B-ANY"  # type: ignore[union-attr]
    assert (await index.find(patient("P1", "RXZ"), both)).patient_id == "B-OTHER-ISSUER"  # type: ignore[union-attr]
    assert await index.find(patient("P1", "RXQ", sender="RXC"), both) is None
    assert await index.find(patient(None), both) is None
    # A patient both ways: the order decides.
    p2 = ForeignPatient(sender="RXA", patient_id="4010232137", issuer="NHS")
    assert await index.find(p2, ("nhs-number", "sender-id")) == LocalPatient(patient_id="B-BOTH")
    p2_local_id = patient("P2")
    assert await index.find(p2_local_id, ("nhs-number",)) is None
    assert await index.find(p2_local_id, ("sender-id",)) == LocalPatient(patient_id="B-BOTH")


@pytest.mark.anyio
async def test_the_csv_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "patient_id,local_patient_id\nP1,L1\n")
    index = CsvPatientIndex(path)
    assert await index.find(patient("P1", None), ("sender-id",)) == LocalPatient(patient_id="L1")
    path.write_text("patient_id,local_patient_id\nP1,L-NEW\n")
    assert await index.find(patient("P1", None), ("sender-id",)) == LocalPatient(patient_id="L-NEW")


@pytest.mark.anyio
async def test_callable_index_sync_and_async() -> None:
    def sync(p: ForeignPatient) -> LocalPatient | None:
        return LocalPatient(patient_id="S-" + (p.patient_id or "")) if p.patient_id else None

    async def later(p: ForeignPatient) -> LocalPatient | None:
        await anyio.sleep(0)
        return sync(p)

    for lookup in (sync, later):
        index = CallablePatientIndex(lookup)
        assert await index.find(patient("P9"), ("sender-id",)) == LocalPatient(patient_id="S-P9")
        assert await index.find(patient(None), ("sender-id",)) is None
    with pytest.raises(TypeError):
        await CallablePatientIndex(lambda p: "L1").find(patient("P1"), ("sender-id",))  # type: ignore[arg-type, return-value]


@pytest.mark.anyio
async def test_table_index_in_the_ledger() -> None:
    ledger = memory_ledger()
    try:
        rows = [
            ("B-NHS", "B", "943 476 5919", None, None, None),
            ("B-ID", "B", None, "rxa", "RXA", "P1"),
            ("B-ANY", None, None, None, "", "P7"),
            ("B-DUP1", None, None, None, None, "P8"),
            ("B-DUP2", None, None, None, None, "P8"),
        ]
        await insert_mapping(ledger, rows)
        index = TablePatientIndex(ledger, "patient_mapping")
        both: tuple[MatchBy, ...] = ("nhs-number", "sender-id")
        nhs = patient("9434765919", "NHS")
        assert await index.find(nhs, both) == LocalPatient(patient_id="B-NHS", issuer="B")
        assert await index.find(patient("P1"), both) == LocalPatient(patient_id="B-ID", issuer="B")
        assert await index.find(patient("P7", None), both) == LocalPatient(patient_id="B-ANY")
        assert await index.find(patient("P1", sender="RXC"), both) is None
        with pytest.raises(PatientMappingError, match="2 local patients"):
            await index.find(patient("P8", None), both)
    finally:
        await ledger.close()
    with pytest.raises(ConfigurationError):
        TablePatientIndex(ledger, "patient_mapping; DROP TABLE store")


async def insert_mapping(ledger: object, rows: Sequence[tuple[object, ...]]) -> None:
    from dicomrelay.ledger.work import Query, Work

    driver = ledger._driver  # type: ignore[attr-defined]
    sql = driver.dialect.render(
        "INSERT INTO patient_mapping (local_patient_id, local_issuer, nhs_number, sender,"
        " issuer, patient_id) VALUES (?, ?, ?, ?, ?, ?)"
    )

    def work() -> Work[None]:
        yield Query(sql, rows, many=True)

    await driver.run(work)


def synthetic_instance() -> bytes:
    profile = synth.PROFILES["mr"]
    return synth.instance(
        profile,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        number=1,
        patient_id="SYN00000042",
        pixels=bytes(range(256)) * (profile.pixel_bytes // 256),
    )


ORIGINALS = {
    PATIENT_ID: "SYN00000042",
    ISSUER_OF_PATIENT_ID: "DICOMRELAY",
    ACCESSION_NUMBER: "ACC000042",
}
FOREIGN = ForeignPatient(sender="RXA", patient_id="SYN00000042", issuer="DICOMRELAY")


def test_plan_applied_by_the_rewriter_reads_back_in_pydicom() -> None:
    data = synthetic_instance()
    rule = Reconcile(csv=Path("x.csv"), accession_prefix="RXA-", institution_name="Trust B")
    edits = plan_reconciliation(
        ORIGINALS,
        foreign=FOREIGN,
        local=LocalPatient(patient_id="B123", issuer="TRUSTB"),
        rule=rule,
        modifying_system="dicomrelay RXB",
        now=NOW,
    )
    out = rewrite(data, edits)
    result = out.header + data[out.pixel_offset :][: out.pixel_length] + out.trailer
    ds = pydicom.dcmread(io.BytesIO(result))
    before = pydicom.dcmread(io.BytesIO(data))
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("B123", "TRUSTB")
    assert ds.AccessionNumber == "RXA-ACC000042"
    assert ds.InstitutionName == "Trust B"
    [original] = ds.OriginalAttributesSequence
    assert original.ReasonForTheAttributeModification == "COERCE"
    assert original.ModifyingSystem == "dicomrelay RXB"
    assert original.SourceOfPreviousValues == "RXA"
    assert original.AttributeModificationDateTime == "20261203093015.250000+0000"
    [previous] = original.ModifiedAttributesSequence
    assert previous.PatientID == "SYN00000042"
    assert previous.IssuerOfPatientID == "DICOMRELAY"
    assert previous.AccessionNumber == "ACC000042"
    assert previous.InstitutionName == ""  # absent before: kept with zero length
    [other] = ds.OtherPatientIDsSequence
    assert (other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID) == (
        "SYN00000042",
        "DICOMRELAY",
        "TEXT",
    )
    assert ds.PixelData == before.PixelData
    assert data[out.pixel_offset :][: out.pixel_length] == before.PixelData
    assert out.digest is not None
    assert len(out.digest) == 64


def test_nothing_to_change_plans_nothing_and_the_local_issuer_fills_in() -> None:
    local = LocalPatient(patient_id="SYN00000042", issuer="DICOMRELAY")
    assert (
        plan_reconciliation(
            ORIGINALS, foreign=FOREIGN, local=local, rule=CSV_RULE, modifying_system="s", now=NOW
        )
        == ()
    )
    rule = Reconcile(csv=Path("x.csv"), local_issuer="TRUSTB")
    edits = plan_reconciliation(
        ORIGINALS,
        foreign=FOREIGN,
        local=LocalPatient(patient_id="SYN00000042"),
        rule=rule,
        modifying_system="s",
        now=NOW,
    )
    set_tags = [e.tag for e in edits if hasattr(e, "tag")]
    assert set_tags == [ISSUER_OF_PATIENT_ID]  # only the issuer changes
    # The ID is the same, so no Other Patient IDs item: only the Original Attributes one.
    assert [getattr(e, "sequence_tag", None) for e in edits][-1] == 0x04000561


def test_accession_rules() -> None:
    local = LocalPatient(patient_id="B1")

    def accession(rule: Reconcile, originals: dict[int, str] = ORIGINALS) -> str | None:
        edits = plan_reconciliation(
            originals, foreign=FOREIGN, local=local, rule=rule, modifying_system="s", now=NOW
        )
        values = [e.value for e in edits if isinstance(e, Set) and e.tag == ACCESSION_NUMBER]
        return str(values[0]) if values else None

    assert accession(CSV_RULE) is None  # kept
    assert accession(Reconcile(csv=Path("x"), accession_prefix="B-")) == "B-ACC000042"
    already = {**ORIGINALS, ACCESSION_NUMBER: "B-ACC000042"}
    assert accession(Reconcile(csv=Path("x"), accession_prefix="B-"), already) is None
    assert accession(Reconcile(csv=Path("x"), replace_accession="")) == ""
    assert accession(Reconcile(csv=Path("x"), replace_accession="LOCAL1")) == "LOCAL1"
    with pytest.raises(AccessionTooLong):
        accession(Reconcile(csv=Path("x"), accession_prefix="TRUST-B-"))  # 17 characters: held
    kept = plan_reconciliation(
        ORIGINALS, foreign=FOREIGN, local=local, rule=CSV_RULE, modifying_system="s", now=NOW
    )
    assert INSTITUTION_NAME not in {getattr(e, "tag", None) for e in kept}  # kept unless set


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "one mapping"),
        ({"csv": Path("a"), "table": "patient_mapping"}, "one mapping"),
        ({"table": "bad name"}, "not a table name"),
        ({"csv": Path("a"), "match": ()}, "match"),
        ({"csv": Path("a"), "match": ("nhs-number", "nhs-number")}, "match"),
        ({"csv": Path("a"), "match": ("mrn",)}, "unknown"),
        ({"csv": Path("a"), "accession_prefix": "A", "replace_accession": "B"}, "not both"),
        ({"csv": Path("a"), "local_issuer": "X" * 65}, "64 characters"),
    ],
)
def test_reconcile_settings_are_checked(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Reconcile(**kwargs)  # type: ignore[arg-type]


def node_toml(tmp_path: Path, rule: str) -> Path:
    (tmp_path / "patients.csv").write_text("patient_id,local_patient_id\nP1,L1\n")
    path = tmp_path / "rx2.toml"
    path.write_text(
        '[node]\norg = "RX2"\ninsecure_plaintext = true\n\n'
        '[[peers]]\norg = "RX1"\nhost = "127.0.0.1"\nport = 7701\nrole = "trust"\n\n' + rule
    )
    return path


def test_receive_rule_reconcile_table_in_toml(tmp_path: Path) -> None:
    path = node_toml(
        tmp_path,
        '[[rules]]\nname = "from-rx1"\ndirection = "receive"\nfrom = ["RX1"]\n'
        '[rules.reconcile]\ncsv = "patients.csv"\nmatch = ["sender-id"]\n'
        'local_issuer = "RX2"\naccession_prefix = "X-"\ninstitution_name = "Trust B"\n',
    )
    [rule] = NodeConfig.from_toml(path).rules
    assert rule.reconcile == Reconcile(
        csv=(tmp_path / "patients.csv").resolve(),
        match=("sender-id",),
        local_issuer="RX2",
        accession_prefix="X-",
        institution_name="Trust B",
    )


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (
            'direction = "receive"\nreconcile = { csv = "absent.csv" }',
            "absent.csv does not exist",
        ),
        (
            'direction = "receive"\nreconcile = { csv = "patients.csv", table = "t" }',
            "one mapping",
        ),
        (
            'direction = "receive"\nreconcile = { csv = "patients.csv", match = ["mrn"] }',
            "unknown 'mrn'",
        ),
        (
            'direction = "receive"\nreconcile = { csv = "patients.csv", prefix = "X" }',
            "no setting 'prefix'",
        ),
        ('direction = "send"\nto = ["RX1"]\nreconcile = { table = "t" }', "only a receive rule"),
        (
            'direction = "receive"\neffect = "refuse"\nreconcile = { table = "t" }',
            "refusing rule",
        ),
        ('direction = "receive"\nreconcile = true', "reconcile must be a table"),
    ],
)
def test_reconcile_mistakes_in_toml(tmp_path: Path, rule: str, words: str) -> None:
    path = node_toml(tmp_path, f'[[rules]]\nname = "r"\n{rule}\n')
    with pytest.raises(ConfigurationError, match=words) as caught:
        NodeConfig.from_toml(path)
    assert str(caught.value).startswith(str(path))
