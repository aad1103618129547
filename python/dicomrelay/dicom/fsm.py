"""The DICOM Upper Layer state machine of PS3.8 section 9.2, as data.

States, events and actions carry the standard's names (``Sta1``, ``Evt6``,
``AE-6`` ...). ``TRANSITIONS`` is Table 9-10; ``next_state`` gives the state an
action leads to. Nothing here performs I/O: the association layer performs an
action's outputs (send a PDU, indicate a primitive, arm a timer).
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STA1 = "Sta1"  # Idle
    STA2 = "Sta2"  # Transport open; awaiting A-ASSOCIATE-RQ PDU
    STA3 = "Sta3"  # Awaiting local A-ASSOCIATE response primitive
    STA4 = "Sta4"  # Awaiting transport connection opening to complete
    STA5 = "Sta5"  # Awaiting A-ASSOCIATE-AC or -RJ PDU
    STA6 = "Sta6"  # Association established, ready for data transfer
    STA7 = "Sta7"  # Awaiting A-RELEASE-RP PDU
    STA8 = "Sta8"  # Awaiting local A-RELEASE response primitive
    STA9 = "Sta9"  # Release collision, requestor: awaiting A-RELEASE response
    STA10 = "Sta10"  # Release collision, acceptor: awaiting A-RELEASE-RP PDU
    STA11 = "Sta11"  # Release collision, requestor: awaiting A-RELEASE-RP PDU
    STA12 = "Sta12"  # Release collision, acceptor: awaiting A-RELEASE response
    STA13 = "Sta13"  # Awaiting transport connection close indication


class Event(enum.StrEnum):
    EVT1 = "Evt1"  # A-ASSOCIATE request (local user)
    EVT2 = "Evt2"  # Transport connect confirmation
    EVT3 = "Evt3"  # A-ASSOCIATE-AC PDU received
    EVT4 = "Evt4"  # A-ASSOCIATE-RJ PDU received
    EVT5 = "Evt5"  # Transport connection indication
    EVT6 = "Evt6"  # A-ASSOCIATE-RQ PDU received
    EVT7 = "Evt7"  # A-ASSOCIATE response primitive (accept)
    EVT8 = "Evt8"  # A-ASSOCIATE response primitive (reject)
    EVT9 = "Evt9"  # P-DATA request primitive
    EVT10 = "Evt10"  # P-DATA-TF PDU received
    EVT11 = "Evt11"  # A-RELEASE request primitive
    EVT12 = "Evt12"  # A-RELEASE-RQ PDU received
    EVT13 = "Evt13"  # A-RELEASE-RP PDU received
    EVT14 = "Evt14"  # A-RELEASE response primitive
    EVT15 = "Evt15"  # A-ABORT request primitive
    EVT16 = "Evt16"  # A-ABORT PDU received
    EVT17 = "Evt17"  # Transport connection closed indication
    EVT18 = "Evt18"  # ARTIM timer expired
    EVT19 = "Evt19"  # Unrecognized or invalid PDU received


class Action(enum.StrEnum):
    AE1 = "AE-1"  # Issue TRANSPORT CONNECT request
    AE2 = "AE-2"  # Send A-ASSOCIATE-RQ PDU
    AE3 = "AE-3"  # Issue A-ASSOCIATE confirmation (accept)
    AE4 = "AE-4"  # Issue A-ASSOCIATE confirmation (reject), close transport
    AE5 = "AE-5"  # Accept the transport connection, start ARTIM
    AE6 = "AE-6"  # Stop ARTIM; indicate A-ASSOCIATE, or send A-ASSOCIATE-RJ and start ARTIM
    AE7 = "AE-7"  # Send A-ASSOCIATE-AC PDU
    AE8 = "AE-8"  # Send A-ASSOCIATE-RJ PDU, start ARTIM
    DT1 = "DT-1"  # Send P-DATA-TF PDU
    DT2 = "DT-2"  # Issue P-DATA indication
    AR1 = "AR-1"  # Send A-RELEASE-RQ PDU
    AR2 = "AR-2"  # Issue A-RELEASE indication
    AR3 = "AR-3"  # Issue A-RELEASE confirmation, close transport
    AR4 = "AR-4"  # Send A-RELEASE-RP PDU, start ARTIM
    AR5 = "AR-5"  # Stop ARTIM
    AR6 = "AR-6"  # Issue P-DATA indication (awaiting release reply)
    AR7 = "AR-7"  # Send P-DATA-TF PDU (awaiting local release response)
    AR8 = "AR-8"  # Issue A-RELEASE indication (release collision)
    AR9 = "AR-9"  # Send A-RELEASE-RP PDU (collision, requestor)
    AR10 = "AR-10"  # Issue A-RELEASE confirmation (collision, acceptor)
    AA1 = "AA-1"  # Send A-ABORT PDU (service-user), (re)start ARTIM
    AA2 = "AA-2"  # Stop ARTIM if running, close transport
    AA3 = "AA-3"  # Issue A-ABORT or A-P-ABORT indication, close transport
    AA4 = "AA-4"  # Issue A-P-ABORT indication
    AA5 = "AA-5"  # Stop ARTIM
    AA6 = "AA-6"  # Ignore the PDU
    AA7 = "AA-7"  # Send A-ABORT PDU
    AA8 = "AA-8"  # Send A-ABORT PDU (service-provider), indicate A-P-ABORT, start ARTIM


S = State
E = Event
A = Action

_DATA_STATES = (S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)


def _row(**cells: Action) -> dict[State, Action]:
    return {State(name.replace("STA", "Sta")): action for name, action in cells.items()}


def _unexpected_pdu(established: Action = A.AA8, in_sta13: Action = A.AA6) -> dict[State, Action]:
    """PDUs that arrive where they make no sense: abort (or ignore in Sta13)."""
    row = {S.STA2: A.AA1, S.STA3: A.AA8, S.STA5: A.AA8, S.STA13: in_sta13}
    row.update(dict.fromkeys(_DATA_STATES, established))
    return row


# PS3.8 Table 9-10: for each event, the action in each state where it is defined.
TRANSITIONS: dict[Event, dict[State, Action]] = {
    E.EVT1: {S.STA1: A.AE1},
    E.EVT2: {S.STA4: A.AE2},
    E.EVT3: {**_unexpected_pdu(), S.STA5: A.AE3},
    E.EVT4: {**_unexpected_pdu(), S.STA5: A.AE4},
    E.EVT5: {S.STA1: A.AE5},
    E.EVT6: {**_unexpected_pdu(in_sta13=A.AA7), S.STA2: A.AE6},
    E.EVT7: {S.STA3: A.AE7},
    E.EVT8: {S.STA3: A.AE8},
    E.EVT9: {S.STA6: A.DT1, S.STA8: A.AR7},
    E.EVT10: {**_unexpected_pdu(), S.STA6: A.DT2, S.STA7: A.AR6},
    E.EVT11: {S.STA6: A.AR1},
    E.EVT12: {**_unexpected_pdu(), S.STA6: A.AR2, S.STA7: A.AR8},
    E.EVT13: {**_unexpected_pdu(), S.STA7: A.AR3, S.STA10: A.AR10, S.STA11: A.AR3},
    E.EVT14: {S.STA8: A.AR4, S.STA9: A.AR9, S.STA12: A.AR4},
    E.EVT15: {
        S.STA3: A.AA1,
        S.STA4: A.AA2,
        S.STA5: A.AA1,
        **dict.fromkeys(_DATA_STATES, A.AA1),
    },
    E.EVT16: {
        S.STA2: A.AA2,
        S.STA3: A.AA3,
        S.STA5: A.AA3,
        **dict.fromkeys(_DATA_STATES, A.AA3),
        S.STA13: A.AA2,
    },
    E.EVT17: {
        S.STA2: A.AA5,
        S.STA3: A.AA4,
        S.STA4: A.AA4,
        S.STA5: A.AA4,
        **dict.fromkeys(_DATA_STATES, A.AA4),
        S.STA13: A.AR5,
    },
    E.EVT18: {S.STA2: A.AA2, S.STA13: A.AA2},
    E.EVT19: _unexpected_pdu(in_sta13=A.AA7),
}

# The state each action leads to; None where it depends on the situation.
_NEXT: dict[Action, State | None] = {
    A.AE1: S.STA4,
    A.AE2: S.STA5,
    A.AE3: S.STA6,
    A.AE4: S.STA1,
    A.AE5: S.STA2,
    A.AE6: None,  # Sta3 if the request is acceptable, Sta13 if rejected
    A.AE7: S.STA6,
    A.AE8: S.STA13,
    A.DT1: S.STA6,
    A.DT2: S.STA6,
    A.AR1: S.STA7,
    A.AR2: S.STA8,
    A.AR3: S.STA1,
    A.AR4: S.STA13,
    A.AR5: S.STA1,
    A.AR6: S.STA7,
    A.AR7: S.STA8,
    A.AR8: None,  # Sta9 for the association requestor, Sta10 for the acceptor
    A.AR9: S.STA11,
    A.AR10: S.STA12,
    A.AA1: S.STA13,
    A.AA2: S.STA1,
    A.AA3: S.STA1,
    A.AA4: S.STA1,
    A.AA5: S.STA1,
    A.AA6: S.STA13,
    A.AA7: S.STA13,
    A.AA8: S.STA13,
}


class InvalidTransition(Exception):
    """An event the state machine does not define in the current state: a
    defect in the caller (local primitives) rather than a peer's fault."""


def action_for(state: State, event: Event) -> Action:
    try:
        return TRANSITIONS[event][state]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not valid in {state.value}") from None


def next_state(action: Action, *, acceptable: bool = True, requestor: bool = True) -> State:
    """Where ``action`` leads: AE-6 to Sta3 or Sta13 (was the request acceptable
    to the service provider?), AR-8 to Sta9 or Sta10 (which side are we?)."""
    state = _NEXT[action]
    if state is not None:
        return state
    if action is A.AE6:
        return S.STA3 if acceptable else S.STA13
    return S.STA9 if requestor else S.STA10
