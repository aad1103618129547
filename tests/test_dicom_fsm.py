"""The Upper Layer state machine table against PS3.8 Table 9-10."""

from __future__ import annotations

import pytest

from dicomrelay.dicom.fsm import (
    TRANSITIONS,
    Action,
    Event,
    InvalidTransition,
    State,
    action_for,
    next_state,
)


@pytest.mark.parametrize(
    ("state", "event", "action", "after"),
    [
        # An association requested, accepted, used, released (requestor side).
        ("Sta1", "Evt1", "AE-1", "Sta4"),
        ("Sta4", "Evt2", "AE-2", "Sta5"),
        ("Sta5", "Evt3", "AE-3", "Sta6"),
        ("Sta6", "Evt9", "DT-1", "Sta6"),
        ("Sta6", "Evt10", "DT-2", "Sta6"),
        ("Sta6", "Evt11", "AR-1", "Sta7"),
        ("Sta7", "Evt10", "AR-6", "Sta7"),
        ("Sta7", "Evt13", "AR-3", "Sta1"),
        # The same from the acceptor side.
        ("Sta1", "Evt5", "AE-5", "Sta2"),
        ("Sta3", "Evt7", "AE-7", "Sta6"),
        ("Sta6", "Evt12", "AR-2", "Sta8"),
        ("Sta8", "Evt9", "AR-7", "Sta8"),
        ("Sta8", "Evt14", "AR-4", "Sta13"),
        ("Sta13", "Evt17", "AR-5", "Sta1"),
        # Rejections, aborts and timers.
        ("Sta5", "Evt4", "AE-4", "Sta1"),
        ("Sta3", "Evt8", "AE-8", "Sta13"),
        ("Sta2", "Evt18", "AA-2", "Sta1"),
        ("Sta6", "Evt16", "AA-3", "Sta1"),
        ("Sta6", "Evt17", "AA-4", "Sta1"),
        ("Sta6", "Evt19", "AA-8", "Sta13"),
        ("Sta13", "Evt19", "AA-7", "Sta13"),
        ("Sta13", "Evt10", "AA-6", "Sta13"),
        ("Sta13", "Evt6", "AA-7", "Sta13"),
        ("Sta2", "Evt10", "AA-1", "Sta13"),
        ("Sta4", "Evt15", "AA-2", "Sta1"),
        # Release collisions.
        ("Sta9", "Evt14", "AR-9", "Sta11"),
        ("Sta11", "Evt13", "AR-3", "Sta1"),
        ("Sta10", "Evt13", "AR-10", "Sta12"),
        ("Sta12", "Evt14", "AR-4", "Sta13"),
    ],
)
def test_transitions(state: str, event: str, action: str, after: str) -> None:
    got = action_for(State(state), Event(event))
    assert got is Action(action)
    assert next_state(got) is State(after)


def test_situational_next_states() -> None:
    assert next_state(Action.AE6, acceptable=True) is State.STA3
    assert next_state(Action.AE6, acceptable=False) is State.STA13
    assert next_state(Action.AR8, requestor=True) is State.STA9
    assert next_state(Action.AR8, requestor=False) is State.STA10


def test_undefined_transitions_are_refused() -> None:
    with pytest.raises(InvalidTransition):
        action_for(State.STA1, Event.EVT9)  # P-DATA with no association


def test_every_received_pdu_is_handled_in_every_connected_state() -> None:
    """A peer can send any PDU at any time; none may leave the machine undefined."""
    received = (Event.EVT3, Event.EVT4, Event.EVT6, Event.EVT10, Event.EVT12, Event.EVT13)
    connected = [s for s in State if s not in (State.STA1, State.STA4)]
    for event in (*received, Event.EVT16, Event.EVT17, Event.EVT19):
        for state in connected:
            assert state in TRANSITIONS[event], f"{event} in {state}"
