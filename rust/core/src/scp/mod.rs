//! The storage SCP's data plane: from the bytes of an established association
//! to C-STORE data sets in files, digested and scanned, reported a message at
//! a time. The association's decisions (negotiation, DIMSE validation,
//! statuses, commits) stay with the caller; only the per-byte work is here.
//!
//! - [`Receiver`]: sans-IO. Bytes in; P-DATA-TF reassembled per presentation
//!   context; each data set written, file meta in front, into a file from a
//!   [`Destination`] as it arrives; whole messages out. Any other PDU, or a
//!   broken stream, ends it.
//! - [`Pump`]: a thread that reads a socket into a `Receiver` and hands its
//!   events over in batches, waking the caller through a descriptor.

mod command;
mod meta;
mod pump;
mod receiver;
mod spares;

pub use command::{read_command, CommandFields};
pub use meta::{file_meta, Implementation};
pub use pump::{Answer, End, Pump, PumpEvent, MAX_WAITING};
pub use receiver::{Dataset, Event, Failure, Message, Receiver, ReceiverConfig};
pub use spares::{Destination, SparePool};
