//! Byte buffers whose data starts on a page boundary and is followed by zero
//! padding to a whole page, so they can be written with `O_DIRECT`.

use std::sync::Mutex;

pub const PAGE: usize = 4096;

/// Freed buffers kept for reuse: a fresh half-megabyte allocation costs more in
/// page faults (and in the unmapping when it is freed) than hashing it does.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const POOL_BUFFERS: usize = 64;
const POOL_LARGEST: usize = 32 << 20;

/// A buffer of at least `capacity` bytes, empty, from the pool when one fits.
pub fn take_buffer(capacity: usize) -> Vec<u8> {
    if let Ok(mut pool) = POOL.lock() {
        if let Some(i) = pool.iter().rposition(|b| b.capacity() >= capacity) {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity(capacity)
}

/// Return a buffer to the pool (or free it when the pool is full).
pub fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() < PAGE || buf.capacity() > POOL_LARGEST {
        return;
    }
    buf.clear();
    if let Ok(mut pool) = POOL.lock() {
        if pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct AlignedBytes {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes, page-aligned.
    pub fn zeroed(len: usize) -> AlignedBytes {
        // Room to slide the start onto a page boundary and to pad the end to one.
        let mut buf = take_buffer(len + 2 * PAGE);
        buf.resize(len + 2 * PAGE, 0);
        let start = buf.as_ptr().align_offset(PAGE).min(PAGE);
        AlignedBytes { buf, start, len }
    }

    /// Wrap bytes without aligning them (for data never written directly).
    pub fn unaligned(buf: Vec<u8>) -> AlignedBytes {
        let len = buf.len();
        AlignedBytes { buf, start: 0, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The data and its zero padding to a whole page, if the start is page-aligned.
    pub fn padded(&self) -> Option<&[u8]> {
        let end = self.start + self.len.div_ceil(PAGE) * PAGE;
        let aligned = (self.buf.as_ptr() as usize + self.start) % PAGE == 0;
        (aligned && end <= self.buf.len()).then(|| &self.buf[self.start..end])
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_page_aligned_and_padded() {
        for len in [0, 1, 4095, 4096, 4097, 525_312] {
            let b = AlignedBytes::zeroed(len);
            assert_eq!(b.len(), len);
            let padded = b.padded().unwrap();
            assert_eq!(padded.as_ptr() as usize % PAGE, 0);
            assert_eq!(padded.len() % PAGE, 0);
            assert!(padded.len() >= len);
            assert!(padded[len..].iter().all(|&x| x == 0));
        }
        assert!(AlignedBytes::unaligned(vec![1, 2, 3]).as_slice() == [1, 2, 3]);
    }
}
