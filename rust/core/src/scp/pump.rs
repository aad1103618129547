//! `Pump`: a thread of its own reads an association's socket into a
//! [`Receiver`] and queues what it completes; the caller takes the events in
//! batches when woken (`notify`), never per read.
//!
//! While it runs, the pump owns the socket's writes too: the caller's bytes
//! go out through `send`, and an answer the caller decided ahead for a data
//! set still arriving (`answer_when_stored`) goes out from the pump's thread
//! the moment the data set is stored whole and matches, without waiting for
//! the caller to wake. Both share one queue, so PDUs never interleave.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::receiver::{Event, Receiver};
use crate::socket::Socket;

/// Messages taken by nobody yet, at most: then the pump stops reading (each
/// holds a file, and a peer that never waits for answers must not get ahead).
pub const MAX_WAITING: usize = 64;

/// One `recv`: large enough for few syscalls, small enough that the bytes are
/// still in cache when they are hashed and written.
const READ_SIZE: usize = 256 << 10;

/// Why the pump stopped reading without the receiver finishing.
#[derive(Debug)]
pub enum End {
    /// The peer closed the connection.
    Closed,
    /// Nothing arrived for the idle time.
    Idle,
    /// The caller stopped it.
    Stopped,
    /// The socket failed (ECONNRESET, ...).
    Socket(io::Error),
}

#[derive(Debug)]
pub enum PumpEvent {
    Event(Event),
    /// The last event: the socket is the caller's again.
    Ended(End),
}

#[derive(Default)]
struct Queue {
    events: Vec<PumpEvent>,
    waiting: usize, // messages among `events`
    /// The caller was woken and has not taken the events since.
    notified: bool,
    stop: bool,
}

impl Queue {
    fn wake(&mut self, notify: &(dyn Fn() + Send + Sync)) {
        if !self.notified {
            self.notified = true;
            notify();
        }
    }
}

/// The answer to a C-STORE the caller decided before its data set was whole:
/// the PDUs to send once it is stored, if its header names this instance (and
/// this SOP class, when it names one) and a study.
#[derive(Debug, Clone)]
pub struct Answer {
    pub pdus: Vec<u8>,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
}

impl Answer {
    fn fits(&self, dataset: &super::receiver::Dataset) -> bool {
        let Some(Ok(info)) = &dataset.scan else {
            return false;
        };
        dataset.error.is_none()
            && (dataset.path.is_some() || dataset.data.is_some())
            && info.sop_instance_uid.as_deref() == Some(self.sop_instance_uid.as_str())
            && info.study_instance_uid.is_some()
            && info
                .sop_class_uid
                .as_deref()
                .is_none_or(|c| c == self.sop_class_uid)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    room: Condvar,
    notify: Box<dyn Fn() + Send + Sync>,
    answers: Mutex<HashMap<u64, Answer>>,
    /// Bytes for the socket not yet written, whoever queued them.
    outbox: Mutex<Vec<u8>>,
    fd: RawFd,
}

impl Shared {
    /// Queue events; wake the caller for any that needs it. A message
    /// already answered (as the caller decided ahead) needs nothing now: it
    /// waits for the next wake, so a C-STORE costs the caller one wake-up.
    fn push(&self, events: impl IntoIterator<Item = PumpEvent>) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        let mut urgent = false;
        for event in events {
            match &event {
                PumpEvent::Event(Event::Message(m)) => {
                    queue.waiting += 1;
                    urgent |= !m.answered;
                }
                _ => urgent = true,
            }
            queue.events.push(event);
        }
        if urgent {
            queue.wake(&*self.notify);
        }
    }

    /// Queue `data` behind what waits and write what the socket takes now;
    /// whether bytes remain (the thread writes them when it can).
    fn send(&self, data: &[u8]) -> io::Result<bool> {
        let mut outbox = self
            .outbox
            .lock()
            .map_err(|_| io::Error::other("outbox poisoned"))?;
        outbox.extend_from_slice(data);
        write_pending(self.fd, &mut outbox)
    }

    /// Send the answer decided for a message just stored, if it fits.
    fn answer(&self, message: &mut super::receiver::Message) {
        let Some(dataset) = &message.dataset else {
            return;
        };
        let answer = match self.answers.lock() {
            Ok(mut answers) => answers.remove(&message.sequence),
            Err(_) => None,
        };
        if let Some(answer) = answer.filter(|a| a.fits(dataset)) {
            // A socket error is the reader's to find; the answer counts as sent.
            let _ = self.send(&answer.pdus);
            message.answered = true;
        }
    }

    /// Wait while the caller has too much to take; false once stopped.
    fn wait_for_room(&self) -> bool {
        let Ok(mut queue) = self.queue.lock() else {
            return false;
        };
        while queue.waiting >= MAX_WAITING && !queue.stop {
            queue.wake(&*self.notify); // it must take them for room to come
            queue = match self.room.wait(queue) {
                Ok(q) => q,
                Err(_) => return false,
            };
        }
        !queue.stop
    }
}

/// Write queued bytes to the non-blocking socket until it would block;
/// whether bytes remain.
fn write_pending(fd: RawFd, outbox: &mut Vec<u8>) -> io::Result<bool> {
    let mut socket = Socket::new(fd);
    let mut written = 0;
    let result = loop {
        if written == outbox.len() {
            break Ok(false);
        }
        match socket.write(&outbox[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(true),
            Err(e) => break Err(e),
        }
    };
    outbox.drain(..written);
    result
}

pub struct Pump {
    shared: Arc<Shared>,
    /// Closed to stop the thread; a byte written wakes it to write the outbox.
    control: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    /// Read the socket `fd` (non-blocking; the caller keeps it open until
    /// `stop` returns, and reads nothing from it meanwhile) into `receiver`.
    /// `notify` is called when events arrive for a caller that has taken all
    /// before; `idle`: how long the peer may send nothing.
    pub fn start(
        fd: RawFd,
        receiver: Receiver,
        idle: Option<Duration>,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Pump> {
        let (control, controlled) = UnixStream::pair()?;
        control.set_nonblocking(true)?;
        controlled.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            room: Condvar::new(),
            notify: Box::new(notify),
            answers: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            fd,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scp-pump".into())
            .spawn(move || {
                let end = run(fd, receiver, idle, controlled, &worker);
                if let Some(end) = end {
                    worker.push([PumpEvent::Ended(end)]);
                }
            })?;
        Ok(Pump {
            shared,
            control: Some(control),
            thread: Some(thread),
        })
    }

    /// Send `data` after whatever waits to be sent (the socket is the pump's
    /// while it runs). Raises the socket's error.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        if self.shared.send(data)? {
            self.wake();
        }
        Ok(())
    }

    /// Decide ahead the answer to the data-set message `sequence` (see
    /// `Event::Command`): sent by the pump once the data set is stored, if
    /// it fits; else the message comes to the caller unanswered.
    pub fn answer_when_stored(&self, sequence: u64, answer: Answer) {
        if let Ok(mut answers) = self.shared.answers.lock() {
            answers.insert(sequence, answer);
        }
    }

    fn wake(&self) {
        if let Some(control) = &self.control {
            let _ = (&*control).write(&[1]);
        }
    }

    /// Every event queued so far, in order.
    pub fn take(&self) -> Vec<PumpEvent> {
        let Ok(mut queue) = self.shared.queue.lock() else {
            return Vec::new();
        };
        queue.waiting = 0;
        queue.notified = false;
        let events = std::mem::take(&mut queue.events);
        drop(queue);
        self.shared.room.notify_all();
        events
    }

    /// Stop reading and wait for the thread (it finishes the write in hand);
    /// no answer decided ahead is sent after this. Returns the bytes not yet
    /// written (the caller's to send). Again: nothing. Events not yet taken
    /// stay to take.
    pub fn stop(&mut self) -> Vec<u8> {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.stop = true;
        }
        self.shared.room.notify_all();
        if let Some(control) = self.control.take() {
            drop(control); // the thread's end reads end-of-file: it wakes
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(mut answers) = self.shared.answers.lock() {
            answers.clear();
        }
        match self.shared.outbox.lock() {
            Ok(mut outbox) => std::mem::take(&mut *outbox),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Pump {
    /// Stops, and removes the files of data sets nobody took.
    fn drop(&mut self) {
        let _ = self.stop();
        for event in self.take() {
            if let PumpEvent::Event(Event::Message(m)) = event {
                if let Some(path) = m.dataset.and_then(|d| d.path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// The thread: poll, read until the socket is empty, feed, queue. Returns the
/// end, or None when the receiver finished (its last event says why).
fn run(
    fd: RawFd,
    mut receiver: Receiver,
    idle: Option<Duration>,
    control: UnixStream,
    shared: &Shared,
) -> Option<End> {
    let mut socket = Socket::new(fd);
    let mut buf = vec![0u8; READ_SIZE];
    let timeout = idle.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    loop {
        if !shared.wait_for_room() {
            return Some(End::Stopped);
        }
        let pending = shared.outbox.lock().is_ok_and(|o| !o.is_empty());
        let writable = if pending { libc::POLLOUT } else { 0 };
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN | writable,
                revents: 0,
            },
            libc::pollfd {
                fd: control.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Some(End::Socket(e));
        }
        if fds[1].revents != 0 {
            // A byte: wake to write the outbox; end-of-file: stop.
            let mut bytes = [0u8; 64];
            match (&control).read(&mut bytes) {
                Ok(0) => return Some(End::Stopped),
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Some(End::Stopped),
                _ => {}
            }
        }
        if ready == 0 {
            return Some(End::Idle);
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return Some(End::Socket(io::Error::from_raw_os_error(libc::EBADF)));
        }
        if fds[0].revents & libc::POLLOUT != 0 {
            if let Ok(mut outbox) = shared.outbox.lock() {
                if let Err(e) = write_pending(fd, &mut outbox) {
                    return Some(End::Socket(e));
                }
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            continue;
        }
        // Read until the socket is empty (a short read says so).
        loop {
            let n = match socket.read(&mut buf) {
                Ok(0) => return Some(End::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Some(End::Socket(e)),
            };
            receiver.feed(&buf[..n]);
            let mut events = receiver.take_events();
            for event in &mut events {
                if let Event::Message(message) = event {
                    shared.answer(message);
                }
            }
            shared.push(events.into_iter().map(PumpEvent::Event));
            if receiver.finished() {
                return None;
            }
            if n < buf.len() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{fragment_pdata, Pdu};
    use crate::scp::receiver::tests::element;
    use crate::scp::{Implementation, ReceiverConfig, SparePool};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn receiver(dir: &std::path::Path) -> Receiver {
        Receiver::new(ReceiverConfig {
            max_pdu_length: 0,
            contexts: vec![(1, "1.2.840.10008.1.2.1".to_owned())],
            calling_ae_title: "SCU".to_owned(),
            implementation: Implementation {
                class_uid: "1.2.3".into(),
                version_name: "T".into(),
            },
            digest: None,
            destination: Arc::new(SparePool::new(dir.to_owned(), 2).unwrap()),
            in_memory: 0,
        })
    }

    fn echo() -> Vec<u8> {
        let mut out = vec![0, 0, 0, 1, 2, 0, 0, 0, 0x30, 0];
        out.extend([0, 0, 0, 8, 2, 0, 0, 0, 1, 1]);
        out
    }

    fn wait_for(events: &mut Vec<PumpEvent>, pump: &Pump, done: impl Fn(&[PumpEvent]) -> bool) {
        for _ in 0..500 {
            events.extend(pump.take());
            if done(events) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{events:?}");
    }

    #[test]
    fn the_pump_reads_messages_and_hands_back_other_pdus() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-pump-{}", std::process::id()));
        let (mut peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = wakes.clone();
        let mut pump = Pump::start(ours.as_raw_fd(), receiver(&dir), None, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        for _ in 0..3 {
            peer.write_all(&fragment_pdata(1, true, &echo(), 0, true).unwrap())
                .unwrap();
        }
        let mut events = Vec::new();
        wait_for(&mut events, &pump, |e| e.len() == 3);
        peer.write_all(&Pdu::ReleaseRq.encode().unwrap()).unwrap();
        wait_for(&mut events, &pump, |e| e.len() == 4);
        assert!(matches!(events[3], PumpEvent::Event(Event::Handback(_))));
        assert!(wakes.load(Ordering::SeqCst) >= 1);
        pump.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A C-STORE of instance `command_uid` whose data set names `dataset_uid`.
    fn c_store(command_uid: &str, dataset_uid: &str) -> Vec<u8> {
        let mut command = element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.7\0");
        command.extend(element(0, 0x0100, &1u16.to_le_bytes()));
        command.extend(element(0, 0x0800, &0u16.to_le_bytes()));
        command.extend(element(0, 0x1000, command_uid.as_bytes()));
        let mut dataset = vec![0x08, 0, 0x18, 0, b'U', b'I', 6, 0];
        dataset.extend(dataset_uid.as_bytes());
        dataset.extend([0x20, 0, 0x0D, 0, b'U', b'I', 4, 0]);
        dataset.extend(b"1.9\0");
        dataset.extend([0xE0, 0x7F, 0x10, 0, b'O', b'B', 0, 0]);
        dataset.extend(50_000u32.to_le_bytes());
        dataset.extend(vec![7u8; 50_000]);
        let mut out = fragment_pdata(1, true, &command, 16_384, true).unwrap();
        out.extend(fragment_pdata(1, false, &dataset, 16_384, true).unwrap());
        out
    }

    #[test]
    fn answers_decided_ahead_go_out_only_for_data_sets_that_fit() {
        let dir =
            std::env::temp_dir().join(format!("dicomrelay-pump-ahead-{}", std::process::id()));
        let (mut peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let pump = Pump::start(ours.as_raw_fd(), receiver(&dir), None, || {}).unwrap();
        for (n, named) in [(1u64, "1.2.30"), (2, "1.2.99")] {
            peer.write_all(&c_store("1.2.30", named)[..200]).unwrap();
            let mut events = Vec::new();
            wait_for(&mut events, &pump, |e| !e.is_empty());
            assert!(
                matches!(events[..], [PumpEvent::Event(Event::Command { sequence, .. })] if sequence == n)
            );
            let answer = Answer {
                pdus: format!("ANSWER{n}").into_bytes(),
                sop_instance_uid: "1.2.30".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            };
            pump.answer_when_stored(n, answer);
            peer.write_all(&c_store("1.2.30", named)[200..]).unwrap();
            let mut events = Vec::new();
            wait_for(&mut events, &pump, |e| !e.is_empty());
            let [PumpEvent::Event(Event::Message(m))] = &events[..] else {
                panic!("{events:?}")
            };
            let _ = std::fs::remove_file(m.dataset.as_ref().unwrap().path.as_ref().unwrap());
            // The first names the command's instance: answered. The second
            // names another: left to the caller, nothing sent.
            assert_eq!(m.answered, n == 1);
        }
        pump.send(b"CALLER").unwrap();
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ANSWER1CALLER");
        drop(pump);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_pump_ends_on_close_idle_and_stop() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-pump-end-{}", std::process::id()));
        let (peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let pump = Pump::start(ours.as_raw_fd(), receiver(&dir), None, || {}).unwrap();
        drop(peer);
        let mut events = Vec::new();
        wait_for(&mut events, &pump, |e| !e.is_empty());
        assert!(matches!(events[..], [PumpEvent::Ended(End::Closed)]));

        let (_peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let idle = Some(Duration::from_millis(20));
        let pump = Pump::start(ours.as_raw_fd(), receiver(&dir), idle, || {}).unwrap();
        let mut events = Vec::new();
        wait_for(&mut events, &pump, |e| !e.is_empty());
        assert!(matches!(events[..], [PumpEvent::Ended(End::Idle)]));

        let (_peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut pump = Pump::start(ours.as_raw_fd(), receiver(&dir), None, || {}).unwrap();
        pump.stop();
        assert!(matches!(pump.take()[..], [PumpEvent::Ended(End::Stopped)]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
