"""DIMSE messages out of P-DATA: command and dataset fragments reassembled per
presentation context (PS3.7 section 6.3.1, PS3.8 annex E)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomrelay.dicom.dimse import Command, CStoreRq, DimseError, parse_command


@dataclass(slots=True)
class Message:
    context_id: int
    command: Command
    dataset: bytes | None = None  # None when there is none


@dataclass(slots=True)
class MessageAssembler:
    """Feed PDVs in order; whole messages come out, each dataset collected in
    memory (an SCU's responses have none; the storage SCP's data plane, which
    streams C-STORE datasets to files, is native: ``ScpReceiver``)."""

    _command: bytearray = field(default_factory=bytearray)
    _pending: Message | None = None
    _dataset: bytearray = field(default_factory=bytearray)

    @property
    def pending(self) -> Message | None:
        """The message whose dataset is arriving, if any."""
        return self._pending

    def feed(self, context_id: int, is_command: bool, is_last: bool, data: bytes) -> Message | None:
        if is_command:
            if self._pending is not None:
                raise DimseError("a command arrived before the last message's dataset ended")
            self._command += data
            if not is_last:
                return None
            command = parse_command(bytes(self._command))
            self._command.clear()
            message = Message(context_id=context_id, command=command)
            if not _has_dataset(command):
                return message
            self._pending = message
            return None
        pending = self._pending
        if pending is None:
            raise DimseError("a dataset fragment arrived without its command")
        if context_id != pending.context_id:
            raise DimseError("a dataset fragment on another presentation context")
        self._dataset += data
        if not is_last:
            return None
        self._pending = None
        pending.dataset = bytes(self._dataset)
        self._dataset.clear()
        return pending


def _has_dataset(command: Command) -> bool:
    return isinstance(command, CStoreRq)
