//! `Pump`: a thread of its own reads an association's socket into a
//! [`Receiver`] and queues what it completes; the caller takes the events in
//! batches when woken (`notify`), never per read.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    room: Condvar,
    notify: Box<dyn Fn() + Send + Sync>,
}

impl Shared {
    fn push(&self, events: impl IntoIterator<Item = PumpEvent>) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        let was_empty = queue.events.is_empty();
        for event in events {
            if matches!(event, PumpEvent::Event(Event::Message(_))) {
                queue.waiting += 1;
            }
            queue.events.push(event);
        }
        if was_empty && !queue.events.is_empty() {
            (self.notify)();
        }
    }

    /// Wait while the caller has too much to take; false once stopped.
    fn wait_for_room(&self) -> bool {
        let Ok(mut queue) = self.queue.lock() else {
            return false;
        };
        while queue.waiting >= MAX_WAITING && !queue.stop {
            queue = match self.room.wait(queue) {
                Ok(q) => q,
                Err(_) => return false,
            };
        }
        !queue.stop
    }
}

pub struct Pump {
    shared: Arc<Shared>,
    stop: Option<UnixStream>,
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
        let (stop, stopped) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            room: Condvar::new(),
            notify: Box::new(notify),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scp-pump".into())
            .spawn(move || {
                let end = run(fd, receiver, idle, &stopped.into(), &worker);
                if let Some(end) = end {
                    worker.push([PumpEvent::Ended(end)]);
                }
            })?;
        Ok(Pump {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Every event queued so far, in order.
    pub fn take(&self) -> Vec<PumpEvent> {
        let Ok(mut queue) = self.shared.queue.lock() else {
            return Vec::new();
        };
        queue.waiting = 0;
        let events = std::mem::take(&mut queue.events);
        drop(queue);
        self.shared.room.notify_all();
        events
    }

    /// Stop reading and wait for the thread (it finishes the write in hand);
    /// again: nothing. Events not yet taken stay to take.
    pub fn stop(&mut self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.stop = true;
        }
        self.shared.room.notify_all();
        if let Some(stop) = self.stop.take() {
            drop(stop); // the thread's end reads end-of-file: it wakes
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Pump {
    /// Stops, and removes the files of data sets nobody took.
    fn drop(&mut self) {
        self.stop();
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
    stopped: &OwnedFd,
    shared: &Shared,
) -> Option<End> {
    let mut socket = Socket::new(fd);
    let mut buf = vec![0u8; READ_SIZE];
    let timeout = idle.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    loop {
        if !shared.wait_for_room() {
            return Some(End::Stopped);
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_raw_fd(),
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
            return Some(End::Stopped);
        }
        if ready == 0 {
            return Some(End::Idle);
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return Some(End::Socket(io::Error::from_raw_os_error(libc::EBADF)));
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
            shared.push(receiver.take_events().into_iter().map(PumpEvent::Event));
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
    use crate::scp::{Implementation, ReceiverConfig, SparePool};
    use std::io::Write;
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
