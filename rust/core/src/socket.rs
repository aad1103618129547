//! A borrowed, non-blocking socket descriptor as `io::Read` and `io::Write`, for
//! the channel's socket adapters: `recv` and `sendmsg` straight from and to the
//! caller's buffers, `EINTR` retried, `EAGAIN` reported as `WouldBlock`, and
//! `MSG_NOSIGNAL` so a peer that hung up is an `EPIPE` error, never a signal.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;

/// The most buffers one `sendmsg` takes (Linux `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// A socket descriptor owned elsewhere: never closed here.
#[derive(Debug, Clone, Copy)]
pub struct Socket(RawFd);

impl Socket {
    pub fn new(fd: RawFd) -> Socket {
        Socket(fd)
    }
}

/// The result of a syscall returning a count or -1, `EINTR` retried.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole
            // call and `recv` writes at most that many; an invalid descriptor is an
            // error (EBADF/ENOTSOCK), not undefined behaviour.
            unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) }
        })
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOV)];
        // SAFETY: `msghdr` is plain old data; all zeroes is a valid value (no
        // address, no control data, no flags).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // `IoSlice` is documented to be ABI compatible with `iovec` on Unix;
        // sendmsg only reads through the pointer despite its `*mut` type.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        retry(|| {
            // SAFETY: `msg` points at `bufs.len()` live iovecs, each describing a
            // slice borrowed for the whole call; the kernel only reads them.
            unsafe { libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL) }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reads_and_writes_a_nonblocking_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let (mut wa, mut rb) = (Socket::new(a.as_raw_fd()), Socket::new(b.as_raw_fd()));
        let mut buf = [0u8; 16];
        assert_eq!(
            rb.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let n = wa
            .write_vectored(&[IoSlice::new(b"he"), IoSlice::new(b"llo")])
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(rb.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop(a);
        assert_eq!(rb.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn writing_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = Socket::new(a.as_raw_fd()).write(b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
