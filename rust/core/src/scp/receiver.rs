//! `Receiver`: an established association's bytes in, whole DIMSE messages
//! out, each C-STORE data set already in its file (sans-IO).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::command::read_command;
use super::meta::{file_meta, Implementation};
use super::spares::Destination;
use crate::aligned::{give_back, take_buffer};
use crate::digest::{to_hex, DigestAlgorithm, Hasher};
use crate::pdu::{Pdu, PduDecoder, PduError, PdvSink};
use crate::{scan, InstanceInfo, ScanError, ScanOptions};

/// The longest command set accepted (a C-STORE-RQ's is about 200 bytes):
/// fragments beyond this are an attack, not a command.
const MAX_COMMAND: usize = 64 << 10;
/// The buffer a data set held in memory starts with (it grows as needed).
const FIRST_BUFFER: u64 = 1 << 20;

/// What the association agreed, read once.
#[derive(Clone)]
pub struct ReceiverConfig {
    /// The largest P-DATA-TF this side advertised (0: no limit).
    pub max_pdu_length: u32,
    /// Accepted presentation contexts: id and transfer syntax.
    pub contexts: Vec<(u8, String)>,
    /// Named in each file's meta as its source (0002,0016).
    pub calling_ae_title: String,
    pub implementation: Implementation,
    pub digest: Option<DigestAlgorithm>,
    pub destination: Arc<dyn Destination>,
    /// A data set up to this many bytes (meta included) is held in memory
    /// and handed over as bytes, with no file made for it; a larger one
    /// goes on into a file from `destination`. 0: always a file.
    pub in_memory: u64,
}

/// A data set received into its file or memory (not yet durable).
#[derive(Debug)]
pub struct Dataset {
    /// Its file; None when it is in `data`, or when writing failed (the file
    /// is removed, `error` says why).
    pub path: Option<PathBuf>,
    /// Its bytes, when it was small enough to hold (`ReceiverConfig::in_memory`).
    pub data: Option<Vec<u8>>,
    /// Of the file, meta included.
    pub length: u64,
    /// Of the file's bytes, meta included.
    pub digest: Option<String>,
    /// The file's header, scanned once it was written.
    pub scan: Option<Result<Box<InstanceInfo>, ScanError>>,
    pub error: Option<io::Error>,
}

#[derive(Debug)]
pub struct Message {
    pub context_id: u8,
    /// The command set's bytes, whole.
    pub command: Vec<u8>,
    /// For a command that announced one.
    pub dataset: Option<Dataset>,
    /// Of a command with a data set: the number its `Event::Command` carried.
    pub sequence: u64,
    /// Whether the answer decided ahead for it was sent (see `Pump::answer_when_stored`).
    pub answered: bool,
}

/// Why the receiver stopped on a broken stream (the association is to be aborted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Bytes that are not PDUs.
    Pdu(PduError),
    /// PDUs whose PDVs break DIMSE framing (PS3.7 6.3.1, PS3.8 annex E).
    Dimse(String),
}

#[derive(Debug)]
pub enum Event {
    /// A command that announces a data set, as soon as it is whole: the
    /// caller may decide its answer while the data set arrives.
    Command {
        sequence: u64,
        context_id: u8,
        command: Vec<u8>,
    },
    Message(Message),
    /// A PDU other than P-DATA-TF (encoded again) and every byte fed after
    /// it: the association machine's to handle. The receiver is done.
    Handback(Vec<u8>),
    /// The receiver is done.
    Failed(Failure),
}

/// A data set being written: the file, its digest so far, and its message.
struct Incoming {
    sequence: u64,
    context_id: u8,
    command: Vec<u8>,
    path: Option<PathBuf>,
    file: Option<File>,
    /// The data set so far while it fits in `in_memory` bytes.
    memory: Option<Vec<u8>>,
    in_memory: u64,
    destination: Arc<dyn Destination>,
    hasher: Option<Hasher>,
    length: u64,
    error: Option<io::Error>,
}

impl Incoming {
    fn write(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(memory) = self.memory.as_mut() {
            if self.length + data.len() as u64 <= self.in_memory {
                if let Some(h) = self.hasher.as_mut() {
                    h.update(data);
                }
                memory.extend_from_slice(data);
                self.length += data.len() as u64;
                return;
            }
            self.spill();
        }
        let Some(file) = self.file.as_mut().filter(|_| self.error.is_none()) else {
            return;
        };
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        match file.write_all(data) {
            Ok(()) => self.length += data.len() as u64,
            Err(e) => self.fail(e),
        }
    }

    /// Too large to hold: what was held goes into a file, and the rest after it.
    fn spill(&mut self) {
        let Some(memory) = self.memory.take() else {
            return;
        };
        match self.destination.create() {
            Ok((path, mut file)) => {
                self.path = Some(path);
                match file.write_all(&memory) {
                    Ok(()) => self.file = Some(file),
                    Err(e) => self.fail(e),
                }
            }
            Err(e) => self.fail(e),
        }
        give_back(memory);
    }

    /// Sticky: nothing after a hole is written, and the file goes at once.
    fn fail(&mut self, e: io::Error) {
        self.error = Some(e);
        self.file = None;
        if let Some(memory) = self.memory.take() {
            give_back(memory);
        }
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn finish(mut self) -> Message {
        if self.memory.is_some() && self.error.is_none() {
            // Held, not written: refused now if the disk could not keep it.
            if let Err(e) = self.destination.room_for(self.length) {
                self.fail(e);
            }
        }
        let file = self.file.take();
        let memory = self.memory.take();
        let scanned = match (&file, &memory, self.error.is_none()) {
            (_, Some(memory), true) => Some(scan(memory, &ScanOptions::default()).map(Box::new)),
            (Some(file), None, true) => Some(scan_file(file, self.length).map(Box::new)),
            _ => None,
        };
        let dataset = Dataset {
            path: self.path.take(),
            data: memory,
            length: self.length,
            digest: self.hasher.take().map(|h| to_hex(&h.finish())),
            scan: scanned,
            error: self.error.take(),
        };
        Message {
            context_id: self.context_id,
            command: std::mem::take(&mut self.command),
            dataset: Some(dataset),
            sequence: self.sequence,
            answered: false,
        }
    }
}

impl Drop for Incoming {
    /// A data set cut short (the association ended inside it) leaves nothing.
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
        if let Some(memory) = self.memory.take() {
            give_back(memory);
        }
    }
}

/// The header of the file just written, mapped (only the pages it reads are
/// touched; they are still in the page cache).
fn scan_file(file: &File, length: u64) -> Result<InstanceInfo, ScanError> {
    let options = ScanOptions::default();
    if length == 0 {
        return scan(&[], &options);
    }
    // SAFETY: the file is ours alone (a new temporary file, not yet handed
    // out) and nothing writes or truncates it while the map lives.
    match unsafe { memmap2::Mmap::map(file) } {
        Ok(map) => scan(&map[..], &options),
        Err(_) => {
            let mut data = Vec::new();
            let read = std::io::Read::read_to_end(&mut &*file, &mut data);
            match read {
                Ok(_) => scan(&data, &options),
                Err(e) => Err(ScanError::new(
                    crate::ErrorKind::Truncated,
                    0,
                    None,
                    format!("cannot read back: {e}"),
                )),
            }
        }
    }
}

/// The PDV sink: reassembly state and the messages it completed.
struct Assembly {
    config: ReceiverConfig,
    contexts: Vec<Option<String>>, // by context id
    /// The PDV under way: context, command or not, last fragment or not.
    pdv: Option<(u8, bool, bool)>,
    command: Vec<u8>,
    command_context: Option<u8>,
    incoming: Option<Incoming>,
    /// Data-set messages begun so far.
    sequence: u64,
    done: Vec<Event>,
    failure: Option<String>,
}

impl Assembly {
    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(reason);
        }
        self.pdv = None;
    }

    fn command_ended(&mut self) {
        let command = std::mem::take(&mut self.command);
        let Some(context_id) = self.command_context.take() else {
            return;
        };
        let fields = match read_command(&command) {
            Ok(fields) => fields,
            Err(reason) => return self.fail(reason),
        };
        if !fields.has_dataset {
            self.done.push(Event::Message(Message {
                context_id,
                command,
                dataset: None,
                sequence: 0,
                answered: false,
            }));
            return;
        }
        let syntax = self.contexts[usize::from(context_id)]
            .clone()
            .unwrap_or_default();
        let config = &self.config;
        let meta = file_meta(
            &fields.sop_class_uid,
            &fields.sop_instance_uid,
            &syntax,
            &config.calling_ae_title,
            &config.implementation,
        );
        self.sequence += 1;
        self.done.push(Event::Command {
            sequence: self.sequence,
            context_id,
            command: command.clone(),
        });
        let mut incoming = Incoming {
            sequence: self.sequence,
            context_id,
            command,
            path: None,
            file: None,
            memory: None,
            in_memory: config.in_memory,
            destination: config.destination.clone(),
            hasher: config.digest.map(DigestAlgorithm::hasher),
            length: 0,
            error: None,
        };
        if config.in_memory > 0 {
            // Pooled: a fresh buffer per data set costs page faults.
            let first = usize::try_from(config.in_memory.min(FIRST_BUFFER)).unwrap_or(0);
            incoming.memory = Some(take_buffer(first));
            incoming.write(&meta);
        } else {
            match config.destination.create() {
                Ok((path, file)) => {
                    incoming.path = Some(path);
                    incoming.file = Some(file);
                    incoming.write(&meta);
                }
                Err(e) => incoming.error = Some(e),
            }
        }
        self.incoming = Some(incoming);
    }
}

impl PdvSink for Assembly {
    fn begin(&mut self, context_id: u8, is_command: bool, is_last: bool) {
        if self.failure.is_some() {
            return;
        }
        if self.contexts[usize::from(context_id)].is_none() {
            return self.fail(format!(
                "a PDV on presentation context {context_id}, which was not accepted"
            ));
        }
        if is_command {
            if self.incoming.is_some() {
                return self
                    .fail("a command arrived before the last message's dataset ended".to_owned());
            }
            if self.command_context.is_some_and(|c| c != context_id) {
                return self.fail("a command's fragments on two presentation contexts".to_owned());
            }
            self.command_context = Some(context_id);
        } else {
            match &self.incoming {
                None => {
                    return self.fail("a dataset fragment arrived without its command".to_owned())
                }
                Some(incoming) if incoming.context_id != context_id => {
                    return self
                        .fail("a dataset fragment on another presentation context".to_owned())
                }
                Some(_) => {}
            }
        }
        self.pdv = Some((context_id, is_command, is_last));
    }

    fn data(&mut self, data: &[u8]) {
        match self.pdv {
            Some((_, true, _)) => {
                if self.command.len() + data.len() > MAX_COMMAND {
                    return self.fail(format!("a command set longer than {MAX_COMMAND} bytes"));
                }
                self.command.extend_from_slice(data);
            }
            Some((_, false, _)) => {
                if let Some(incoming) = self.incoming.as_mut() {
                    incoming.write(data);
                }
            }
            None => {}
        }
    }

    fn end(&mut self) {
        let Some((_, is_command, is_last)) = self.pdv.take() else {
            return;
        };
        if !is_last {
            return;
        }
        if is_command {
            self.command_ended();
        } else if let Some(incoming) = self.incoming.take() {
            self.done.push(Event::Message(incoming.finish()));
        }
    }
}

/// See the module documentation. Events wait in `take_events`.
pub struct Receiver {
    decoder: PduDecoder,
    assembly: Assembly,
    events: Vec<Event>,
    finished: bool,
}

impl Receiver {
    pub fn new(config: ReceiverConfig) -> Receiver {
        let mut contexts = vec![None; 256];
        for (id, syntax) in &config.contexts {
            contexts[usize::from(*id)] = Some(syntax.clone());
        }
        Receiver {
            decoder: PduDecoder::new(config.max_pdu_length),
            assembly: Assembly {
                config,
                contexts,
                pdv: None,
                command: Vec::new(),
                command_context: None,
                incoming: None,
                sequence: 0,
                done: Vec::new(),
                failure: None,
            },
            events: Vec::new(),
            finished: false,
        }
    }

    /// Whether the receiver has handed back or failed: it takes no more bytes.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Bytes received; the messages they complete (and the end, if they bring
    /// it) wait in `take_events`.
    pub fn feed(&mut self, data: &[u8]) {
        if self.finished {
            return;
        }
        let mut pdus = Vec::new();
        let result = self.decoder.feed_pdvs(data, &mut pdus, &mut self.assembly);
        self.events.append(&mut self.assembly.done);
        if let Some(reason) = self.assembly.failure.take() {
            return self.end(Event::Failed(Failure::Dimse(reason)));
        }
        match result {
            Err(e) => self.end(Event::Failed(Failure::Pdu(e))),
            Ok(used) => {
                if let Some(pdu) = pdus.pop() {
                    self.hand_back(&pdu, &data[used..]);
                }
            }
        }
    }

    fn hand_back(&mut self, pdu: &Pdu, rest: &[u8]) {
        match pdu.encode() {
            Ok(mut bytes) => {
                bytes.extend_from_slice(rest);
                self.end(Event::Handback(bytes));
            }
            // A PDU just decoded always encodes; if not, it is not one to act on.
            Err(e) => self.end(Event::Failed(Failure::Pdu(e))),
        }
    }

    fn end(&mut self, event: Event) {
        self.finished = true;
        self.assembly.incoming = None; // a data set cut short is removed
        self.events.push(event);
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pdu::fragment_pdata;
    use crate::scp::SparePool;

    const SYNTAX: &str = "1.2.840.10008.1.2.1";

    /// An implicit VR little endian element (the test messages' encoding).
    pub(crate) fn element(group: u16, element: u16, value: &[u8]) -> Vec<u8> {
        let mut out = group.to_le_bytes().to_vec();
        out.extend(element.to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
        out.extend(value);
        out
    }

    fn c_store(uid: &str) -> Vec<u8> {
        let mut out = element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.7\0");
        out.extend(element(0, 0x0100, &1u16.to_le_bytes()));
        out.extend(element(0, 0x0110, &7u16.to_le_bytes()));
        out.extend(element(0, 0x0800, &0u16.to_le_bytes()));
        out.extend(element(0, 0x1000, uid.as_bytes()));
        out
    }

    /// An explicit VR little endian data set naming `uid` (even length), then `pixels` bytes.
    fn dataset(uid: &str, pixels: usize) -> Vec<u8> {
        let mut out = vec![0x08, 0, 0x18, 0, b'U', b'I'];
        out.extend((uid.len() as u16).to_le_bytes());
        out.extend(uid.as_bytes());
        out.extend([0x20, 0, 0x0D, 0, b'U', b'I', 4, 0]);
        out.extend(b"1.9\0");
        out.extend([0xE0, 0x7F, 0x10, 0, b'O', b'W', 0, 0]);
        out.extend((pixels as u32).to_le_bytes());
        out.extend((0..pixels).map(|i| (i % 251) as u8));
        out
    }

    fn receiver(dir: &std::path::Path) -> Receiver {
        Receiver::new(ReceiverConfig {
            max_pdu_length: 16_384,
            contexts: vec![(1, SYNTAX.to_owned()), (3, SYNTAX.to_owned())],
            calling_ae_title: "SCU".to_owned(),
            implementation: Implementation {
                class_uid: "1.2.3".into(),
                version_name: "T".into(),
            },
            digest: Some(DigestAlgorithm::Sha256),
            destination: Arc::new(SparePool::new(dir.to_owned(), 2).unwrap()),
            in_memory: 0,
        })
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dicomrelay-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn data_sets_land_in_files_whatever_the_reads() {
        let dir = temp("receiver");
        let mut stream = Vec::new();
        let sets = [dataset("1.2.10", 70_000), dataset("1.2.20", 10)];
        for (uid, set) in ["1.2.10", "1.2.20"].iter().zip(&sets) {
            stream.extend(fragment_pdata(1, true, &c_store(uid), 16_384, true).unwrap());
            stream.extend(fragment_pdata(1, false, set, 16_384, true).unwrap());
        }
        let mut echo = element(0, 0x0100, &0x30u16.to_le_bytes());
        echo.extend(element(0, 0x0800, &0x0101u16.to_le_bytes()));
        stream.extend(fragment_pdata(3, true, &echo, 16_384, true).unwrap());
        stream.extend(Pdu::ReleaseRq.encode().unwrap());
        stream.extend(b"tail");
        for read in [1usize, 4_097, stream.len()] {
            let mut r = receiver(&dir);
            let mut events = Vec::new();
            for piece in stream.chunks(read) {
                r.feed(piece);
                events.extend(r.take_events());
            }
            assert!(r.finished());
            let commands: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Command { sequence, .. } => Some(*sequence),
                    _ => None,
                })
                .collect();
            assert_eq!(commands, [1, 2], "each data set's command comes first");
            events.retain(|e| !matches!(e, Event::Command { .. }));
            let [Event::Message(a), Event::Message(b), Event::Message(e), Event::Handback(back)] =
                &events[..]
            else {
                panic!("{events:?}")
            };
            assert_eq!((a.sequence, b.sequence), (1, 2));
            assert_eq!(e.context_id, 3);
            assert!(e.dataset.is_none());
            // The release request, and the rest of the read it ended in.
            let release_end = stream.len() - 4;
            let read_end = (release_end - 1) / read * read + read;
            let mut expected_back = Pdu::ReleaseRq.encode().unwrap();
            expected_back.extend(&stream[release_end..read_end.min(stream.len())]);
            assert_eq!(back, &expected_back);
            for (message, (uid, set)) in [a, b].iter().zip(["1.2.10", "1.2.20"].iter().zip(&sets)) {
                let d = message.dataset.as_ref().unwrap();
                let path = d.path.as_ref().unwrap();
                let bytes = std::fs::read(path).unwrap();
                let info = d.scan.as_ref().unwrap().as_ref().unwrap();
                assert_eq!(&bytes[info.dataset_offset as usize..], &set[..]);
                assert_eq!(info.sop_instance_uid.as_deref(), Some(*uid));
                assert_eq!(d.length, bytes.len() as u64);
                assert_eq!(
                    d.digest.as_deref(),
                    Some(&crate::digest(&bytes, DigestAlgorithm::Sha256, None).whole[..])
                );
                assert_eq!(message.command, c_store(uid));
                std::fs::remove_file(path).unwrap();
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_data_sets_stay_in_memory_and_large_ones_spill_to_a_file() {
        let dir = temp("receiver-memory");
        let sets = [dataset("1.2.40", 10), dataset("1.2.41", 70_000)];
        let receive = |sets: &[Vec<u8>]| {
            let mut r = Receiver::new(ReceiverConfig {
                in_memory: 20_000,
                ..receiver(&dir).assembly.config.clone()
            });
            for (i, set) in sets.iter().enumerate() {
                let uid = format!("1.2.4{i}");
                let mut stream = fragment_pdata(1, true, &c_store(&uid), 16_384, true).unwrap();
                stream.extend(fragment_pdata(1, false, set, 16_384, true).unwrap());
                r.feed(&stream);
            }
            r.take_events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Message(m) => m.dataset,
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // Only small ones: not a file is made, not even a spare.
        let held = receive(&sets[..1]);
        let d = &held[0];
        assert!(d.path.is_none() && d.error.is_none());
        let bytes = d.data.as_ref().unwrap();
        let info = d.scan.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(&bytes[info.dataset_offset as usize..], &sets[0][..]);
        assert_eq!(d.length, bytes.len() as u64);
        assert_eq!(
            d.digest.as_deref(),
            Some(&crate::digest(bytes, DigestAlgorithm::Sha256, None).whole[..])
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // A large one goes on in a file, whole: what was held, then the rest.
        let both = receive(&sets);
        let large = &both[1];
        assert!(large.data.is_none());
        let bytes = std::fs::read(large.path.as_ref().unwrap()).unwrap();
        let info = large.scan.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(info.sop_instance_uid.as_deref(), Some("1.2.41"));
        assert_eq!(&bytes[info.dataset_offset as usize..], &sets[1][..]);
        assert_eq!(
            large.digest.as_deref(),
            Some(&crate::digest(&bytes, DigestAlgorithm::Sha256, None).whole[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files nowhere, and no room: as a full disk.
    struct Full;

    impl Destination for Full {
        fn create(&self) -> io::Result<(PathBuf, File)> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }

        fn room_for(&self, _bytes: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }

    #[test]
    fn a_data_set_held_in_memory_is_refused_when_the_disk_has_no_room_for_it() {
        let dir = temp("receiver-full");
        let mut r = Receiver::new(ReceiverConfig {
            in_memory: 1 << 20,
            destination: Arc::new(Full),
            ..receiver(&dir).assembly.config.clone()
        });
        let mut stream = fragment_pdata(1, true, &c_store("1.2.50"), 16_384, true).unwrap();
        stream.extend(fragment_pdata(1, false, &dataset("1.2.50", 100), 16_384, true).unwrap());
        r.feed(&stream);
        let events = r.take_events();
        let [Event::Command { .. }, Event::Message(m)] = &events[..] else {
            panic!("{events:?}")
        };
        let d = m.dataset.as_ref().unwrap();
        assert!(d.data.is_none() && d.path.is_none() && d.scan.is_none());
        assert_eq!(d.error.as_ref().unwrap().raw_os_error(), Some(libc::ENOSPC));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broken_framing_fails_and_leaves_no_partial_file() {
        let dir = temp("receiver-broken");
        let mut stream = fragment_pdata(1, true, &c_store("1.2.30"), 16_384, true).unwrap();
        // The first P-DATA-TF of a data set, then a new command: DIMSE framing is broken.
        let set = dataset("1.2.30", 40_000);
        let pdus = fragment_pdata(1, false, &set, 16_384, true).unwrap();
        stream.extend(&pdus[..6 + 16_384]);
        let mut r = receiver(&dir);
        r.feed(&stream);
        assert!(matches!(
            r.take_events()[..],
            [Event::Command { sequence: 1, .. }]
        ));
        r.feed(&fragment_pdata(1, true, &c_store("1.2.31"), 16_384, true).unwrap());
        let events = r.take_events();
        let [Event::Failed(Failure::Dimse(reason))] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(reason.contains("before the last message's dataset ended"));
        assert!(r.finished());
        drop(r); // and its spare files
        let named: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(
            named.is_empty(),
            "the partial data set is removed: {named:?}"
        );
        for (bad, why) in [
            (
                fragment_pdata(5, true, b"x", 16_384, true).unwrap(),
                "not accepted",
            ),
            (
                fragment_pdata(1, false, b"x", 16_384, true).unwrap(),
                "without its command",
            ),
            (
                fragment_pdata(1, true, b"\x00\x00", 16_384, true).unwrap(),
                "truncated",
            ),
        ] {
            let mut r = receiver(&dir);
            r.feed(&bad);
            let events = r.take_events();
            let [Event::Failed(Failure::Dimse(reason))] = &events[..] else {
                panic!("{events:?}")
            };
            assert!(reason.contains(why), "{reason}");
        }
        let mut r = receiver(&dir);
        r.feed(&[0x42, 0, 0, 0, 0, 0]);
        assert!(matches!(
            &r.take_events()[..],
            [Event::Failed(Failure::Pdu(_))]
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
