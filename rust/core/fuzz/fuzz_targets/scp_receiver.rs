//! Arbitrary bytes into the storage SCP's data plane (`scp::Receiver`), as an
//! established association's peer would send them: it must return, never
//! panic; fed in other pieces it must give the same messages (command sets,
//! files with the same bytes, the same scan verdicts) and end the same way;
//! and it must leave no file behind but those of the messages it reported.

#![no_main]

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dicomrelay_core::scp::{Destination, Event, Implementation, Receiver, ReceiverConfig};
use dicomrelay_core::DigestAlgorithm;
use libfuzzer_sys::fuzz_target;

struct Folder(PathBuf);

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Destination for Folder {
    fn create(&self) -> io::Result<(PathBuf, File)> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.0.join(format!("{n}.dcm"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }
}

fn folder() -> PathBuf {
    let base = PathBuf::from("/dev/shm");
    let base = if base.is_dir() { base } else { std::env::temp_dir() };
    let dir = base.join(format!("dicomrelay-fuzz-scp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for the fuzzed files");
    dir
}

/// What a run gave, comparable across runs: per event, its kind and contents.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Command {
        sequence: u64,
        context_id: u8,
        command: Vec<u8>,
    },
    Message {
        context_id: u8,
        command: Vec<u8>,
        file: Option<(Vec<u8>, Option<String>, bool)>,
    },
    Handback(Vec<u8>),
    Failed(String),
}

fn run(data: &[u8], piece: usize, dir: &PathBuf) -> Vec<Seen> {
    let mut receiver = Receiver::new(ReceiverConfig {
        max_pdu_length: 16384,
        contexts: vec![(1, "1.2.840.10008.1.2.1".into()), (3, "1.2.840.10008.1.2".into())],
        calling_ae_title: "FUZZ".into(),
        implementation: Implementation {
            class_uid: "1.2.3".into(),
            version_name: "FUZZ".into(),
        },
        digest: Some(DigestAlgorithm::Blake3),
        destination: Arc::new(Folder(dir.clone())),
        in_memory: 0,
    });
    let mut seen = Vec::new();
    for chunk in data.chunks(piece) {
        receiver.feed(chunk);
        for event in receiver.take_events() {
            seen.push(match event {
                Event::Command {
                    sequence,
                    context_id,
                    command,
                } => Seen::Command {
                    sequence,
                    context_id,
                    command,
                },
                Event::Message(m) => Seen::Message {
                    context_id: m.context_id,
                    command: m.command,
                    file: m.dataset.map(|d| {
                        let bytes = d
                            .path
                            .as_ref()
                            .map(|p| {
                                let bytes = std::fs::read(p).expect("a reported file exists");
                                std::fs::remove_file(p).expect("removable");
                                assert_eq!(bytes.len() as u64, d.length);
                                bytes
                            })
                            .unwrap_or_default();
                        let scanned = matches!(d.scan, Some(Ok(_)));
                        (bytes, d.digest, scanned)
                    }),
                },
                // The PDU handed back, without what followed it in its piece.
                Event::Handback(bytes) => {
                    let length = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
                    Seen::Handback(bytes[..6 + length as usize].to_vec())
                }
                Event::Failed(f) => Seen::Failed(format!("{f:?}")),
            });
        }
        if receiver.finished() {
            assert!(receiver.take_events().is_empty());
            break;
        }
    }
    drop(receiver);
    seen
}

fuzz_target!(|input: &[u8]| {
    let [piece, data @ ..] = input else {
        return;
    };
    let dir = folder();
    let whole = run(data, data.len().max(1), &dir);
    let piece = usize::from(*piece % 64) + 1;
    let pieces = run(data, piece, &dir);
    // A failure names the offset where decoding stopped, the same either way.
    assert_eq!(pieces, whole, "pieces of {piece} bytes");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("the folder").collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
});
