//! `PduDecoder`: bytes in any fragmentation in, whole PDUs out.
//!
//! Association PDUs are gathered whole, then decoded. P-DATA-TF PDUs are split
//! into PDVs as they arrive, each PDV's data copied once, from the input
//! straight into its own `Vec`. A PDU's declared length is checked against the
//! limit as soon as its 6-byte header is in, before any of its body is held.

use super::codec::{decode_body, ASSOCIATE_FIXED_LEN};
use super::error::{PduError, PduErrorKind, Result};
use super::{pdu_name, pdu_type, PData, Pdu, Pdv};

/// The longest A-ASSOCIATE-RQ/-AC body accepted (its own limit: the maximum
/// length negotiated applies to P-DATA-TF only). 128 presentation contexts of
/// 38 transfer syntaxes each, the most DCMTK proposes, take about 340 KB.
pub const MAX_ASSOCIATE_LENGTH: u32 = 1 << 20;

/// Without a negotiated limit, a PDV's buffer starts at most this large and
/// grows only as its bytes arrive.
const UNLIMITED_PREALLOC: usize = 1 << 20;

const HEADER_LEN: usize = 6;

/// Where P-DATA-TF contents go when they are not to be held: each PDV's
/// header, then its bytes as they arrive, then its end (a storage SCP writes
/// data sets to files as they come). A sink keeps its own errors: decoding
/// goes on, and the caller asks the sink once the call returns.
pub trait PdvSink {
    /// A PDV begins: its presentation context, whether it carries a command
    /// (else a data set), and whether it is its message's last fragment.
    fn begin(&mut self, context_id: u8, is_command: bool, is_last: bool);
    /// The next bytes of the PDV begun last.
    fn data(&mut self, data: &[u8]);
    /// The PDV begun last is complete.
    fn end(&mut self);
}

enum State {
    /// Between PDUs, or inside a PDU header.
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    /// Inside the body of a PDU other than P-DATA-TF.
    Body {
        pdu_type: u8,
        body: Vec<u8>,
        len: usize,
    },
    /// Inside a P-DATA-TF PDU with `left` bytes of it still to come.
    PData {
        left: usize,
        pdvs: Vec<Pdv>,
        pdv: PdvState,
    },
}

enum PdvState {
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    /// `left` bytes of the last PDV's data still to come.
    Data { left: usize },
}

/// A streaming decoder of the PDUs one peer sends.
pub struct PduDecoder {
    max_pdu_length: u32,
    /// Stream offset of the next byte fed.
    offset: u64,
    /// Stream offset where the PDU being decoded starts.
    pdu_start: u64,
    state: State,
    /// Once decoding fails the stream cannot be resynchronised: every later
    /// call returns the same error.
    failed: Option<PduError>,
}

impl PduDecoder {
    /// `max_pdu_length`: the Maximum Length this side advertises (PS3.7
    /// D.3.3.1), the longest P-DATA-TF variable field it accepts; 0 = no limit.
    pub fn new(max_pdu_length: u32) -> Self {
        PduDecoder {
            max_pdu_length,
            offset: 0,
            pdu_start: 0,
            state: State::Header {
                buf: [0; HEADER_LEN],
                filled: 0,
            },
            failed: None,
        }
    }

    pub fn max_pdu_length(&self) -> u32 {
        self.max_pdu_length
    }

    /// Bytes received of a PDU not yet complete: 0 at a PDU boundary.
    pub fn pending(&self) -> u64 {
        self.offset - self.pdu_start
    }

    /// The error that stopped the decoder, if one did.
    pub fn error(&self) -> Option<&PduError> {
        self.failed.as_ref()
    }

    /// Decode `data`, appending every PDU it completes to `out`. On an error,
    /// `out` keeps the PDUs completed before it and the decoder stays failed.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Pdu>) -> Result<()> {
        self.feed_checked(data, out, None).map(|_| ())
    }

    /// Like `feed`, but every PDV goes to `sink` as it arrives (P-DATA-TF
    /// PDUs do not come out at all), and decoding stops after any other PDU,
    /// which comes out in `out`: what follows it is the caller's to handle.
    /// Returns how many bytes of `data` were used.
    pub fn feed_pdvs(
        &mut self,
        data: &[u8],
        out: &mut Vec<Pdu>,
        sink: &mut dyn PdvSink,
    ) -> Result<usize> {
        self.feed_checked(data, out, Some(sink))
    }

    fn feed_checked(
        &mut self,
        data: &[u8],
        out: &mut Vec<Pdu>,
        sink: Option<&mut dyn PdvSink>,
    ) -> Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_inner(data, out, sink);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Fail unless the stream ended at a PDU boundary.
    pub fn finish(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending() == 0 {
            return Ok(());
        }
        Err(PduError::new(
            PduErrorKind::Truncated,
            self.offset,
            format!("the stream ends {} bytes into a PDU", self.pending()),
        ))
    }

    fn feed_inner<'s>(
        &mut self,
        input: &[u8],
        out: &mut Vec<Pdu>,
        mut sink: Option<&mut (dyn PdvSink + 's)>,
    ) -> Result<usize> {
        let mut data = input;
        while !data.is_empty() {
            let taken = match &mut self.state {
                State::Header { buf, filled } => {
                    if *filled == 0 && !(1..=7).contains(&data[0]) {
                        return Err(PduError::new(
                            PduErrorKind::UnknownPduType,
                            self.offset,
                            format!("PDU type 0x{:02X}", data[0]),
                        ));
                    }
                    let n = take(buf, filled, data);
                    if *filled == HEADER_LEN {
                        let header = *buf;
                        self.state = self.start_pdu(header)?;
                    }
                    n
                }
                State::Body {
                    pdu_type,
                    body,
                    len,
                } => {
                    let n = (*len - body.len()).min(data.len());
                    body.extend_from_slice(&data[..n]);
                    if body.len() == *len {
                        let base = self.pdu_start + HEADER_LEN as u64;
                        out.push(decode_body(*pdu_type, body, base)?);
                        self.end_pdu(n);
                        data = &data[n..];
                        if sink.is_some() {
                            break;
                        }
                        continue;
                    }
                    n
                }
                State::PData { left, pdvs, pdv } => {
                    let at = self.offset;
                    let limit = self.max_pdu_length;
                    let streaming = sink.is_some();
                    let n = feed_pdata(at, limit, left, pdvs, pdv, data, sink.as_deref_mut())?;
                    if *left == 0 {
                        let pdvs = std::mem::take(pdvs);
                        if !streaming {
                            out.push(Pdu::PData(PData { pdvs }));
                        }
                        self.end_pdu(n);
                        data = &data[n..];
                        continue;
                    }
                    n
                }
            };
            self.offset += taken as u64;
            data = &data[taken..];
        }
        Ok(input.len() - data.len())
    }

    /// The state after a complete header, once its length is checked.
    fn start_pdu(&self, header: [u8; HEADER_LEN]) -> Result<State> {
        let pdu_type = header[0];
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let name = pdu_name(pdu_type);
        let at = self.pdu_start + 2;
        let fail = |kind, detail: String| Err(PduError::new(kind, at, detail));
        let limit = match pdu_type {
            pdu_type::P_DATA_TF if self.max_pdu_length == 0 => u32::MAX,
            pdu_type::P_DATA_TF => self.max_pdu_length,
            pdu_type::ASSOCIATE_RQ | pdu_type::ASSOCIATE_AC => MAX_ASSOCIATE_LENGTH,
            _ if len != 4 => {
                return fail(
                    PduErrorKind::LengthMismatch,
                    format!("{name} of {len} bytes: its length is always 4"),
                )
            }
            _ => 4,
        };
        if len > limit {
            return fail(
                PduErrorKind::TooLong,
                format!("{name} of {len} bytes, more than the {limit} accepted"),
            );
        }
        // On 16-bit targets a u32 may not fit; the limit check makes that moot
        // elsewhere, and here it is an error rather than a truncation.
        let len = usize::try_from(len).map_err(|_| {
            PduError::new(
                PduErrorKind::TooLong,
                at,
                "PDU length exceeds the address space",
            )
        })?;
        if pdu_type == pdu_type::P_DATA_TF {
            if len == 0 {
                return fail(
                    PduErrorKind::MissingItem,
                    "a P-DATA-TF PDU without a PDV".to_owned(),
                );
            }
            return Ok(State::PData {
                left: len,
                pdvs: Vec::new(),
                pdv: PdvState::Header {
                    buf: [0; HEADER_LEN],
                    filled: 0,
                },
            });
        }
        if matches!(pdu_type, pdu_type::ASSOCIATE_RQ | pdu_type::ASSOCIATE_AC)
            && len < ASSOCIATE_FIXED_LEN
        {
            return fail(
                PduErrorKind::LengthMismatch,
                format!(
                    "{name} of {len} bytes, shorter than its {ASSOCIATE_FIXED_LEN}-byte fixed part"
                ),
            );
        }
        Ok(State::Body {
            pdu_type,
            // Grown as the body arrives: a header alone never costs its length.
            body: Vec::with_capacity(len.min(64 << 10)),
            len,
        })
    }

    /// Back to the header state after the last `n` bytes completed a PDU.
    fn end_pdu(&mut self, n: usize) {
        self.offset += n as u64;
        self.pdu_start = self.offset;
        self.state = State::Header {
            buf: [0; HEADER_LEN],
            filled: 0,
        };
    }
}

/// Copy as much of `data` into `buf[filled..]` as fits; returns how much.
fn take(buf: &mut [u8], filled: &mut usize, data: &[u8]) -> usize {
    let n = (buf.len() - *filled).min(data.len());
    buf[*filled..*filled + n].copy_from_slice(&data[..n]);
    *filled += n;
    n
}

/// Feed P-DATA-TF body bytes: PDV headers (4-byte item length, context id,
/// message control header) and PDV data. Returns how many bytes of `data`
/// were used; `left` counts down the PDU body. `at` is the offset of `data`.
/// With a `sink`, every PDV goes there instead of into `pdvs`.
fn feed_pdata<'s>(
    at: u64,
    max_pdu_length: u32,
    left: &mut usize,
    pdvs: &mut Vec<Pdv>,
    pdv: &mut PdvState,
    data: &[u8],
    mut sink: Option<&mut (dyn PdvSink + 's)>,
) -> Result<usize> {
    let data = &data[..data.len().min(*left)];
    let n = match pdv {
        PdvState::Header { buf, filled } => {
            if *filled == 0 && *left < HEADER_LEN {
                return Err(PduError::new(
                    PduErrorKind::LengthMismatch,
                    at,
                    format!("{left} bytes left in the P-DATA-TF PDU, too few for a PDV header"),
                ));
            }
            let n = take(buf, filled, data);
            if *filled == HEADER_LEN {
                let item_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let header_at = (at + n as u64).saturating_sub(HEADER_LEN as u64);
                let data_len = (item_len as usize).checked_sub(2).ok_or_else(|| {
                    PduError::new(
                        PduErrorKind::LengthMismatch,
                        header_at,
                        format!("PDV item length {item_len}: less than its 2-byte header"),
                    )
                })?;
                let left_after = *left - n;
                if data_len > left_after {
                    return Err(PduError::new(
                        PduErrorKind::LengthMismatch,
                        header_at,
                        format!("a PDV of {data_len} bytes runs past its P-DATA-TF PDU ({left_after} left)"),
                    ));
                }
                // data_len fits in the PDU, whose length is within the limit.
                let prealloc = match max_pdu_length {
                    0 => data_len.min(UNLIMITED_PREALLOC),
                    _ => data_len,
                };
                let control = buf[5];
                let (context_id, is_command, is_last) =
                    (buf[4], control & 1 != 0, control & 2 != 0);
                match sink.as_deref_mut() {
                    Some(sink) => sink.begin(context_id, is_command, is_last),
                    None => pdvs.push(Pdv {
                        context_id,
                        is_command,
                        is_last,
                        data: Vec::with_capacity(prealloc),
                    }),
                }
                *pdv = PdvState::Data { left: data_len };
            }
            n
        }
        PdvState::Data { left: pdv_left } => {
            let n = (*pdv_left).min(data.len());
            match sink.as_deref_mut() {
                Some(sink) if n > 0 => sink.data(&data[..n]),
                Some(_) => {}
                None => {
                    if let Some(last) = pdvs.last_mut() {
                        last.data.extend_from_slice(&data[..n]);
                    }
                }
            }
            *pdv_left -= n;
            n
        }
    };
    *left -= n;
    if matches!(pdv, PdvState::Data { left: 0 }) {
        if let Some(sink) = sink {
            sink.end();
        }
        *pdv = PdvState::Header {
            buf: [0; HEADER_LEN],
            filled: 0,
        };
    }
    Ok(n)
}

/// Decode a buffer holding whole PDUs, as a peer would send them.
pub fn decode_all(data: &[u8], max_pdu_length: u32) -> Result<Vec<Pdu>> {
    let mut decoder = PduDecoder::new(max_pdu_length);
    let mut out = Vec::new();
    decoder.feed(data, &mut out)?;
    decoder.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Abort;

    #[test]
    fn pending_and_finish_track_pdu_boundaries() {
        let mut d = PduDecoder::new(100);
        let mut out = Vec::new();
        d.feed(&[], &mut out).unwrap();
        d.finish().unwrap();
        d.feed(&[5, 0, 0, 0], &mut out).unwrap();
        assert_eq!(d.pending(), 4);
        let err = d.finish().unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::Truncated, 4));
        d.feed(&[0, 4, 0, 0, 0, 0, 7, 0], &mut out).unwrap();
        assert_eq!(out, vec![Pdu::ReleaseRq]);
        assert_eq!(d.pending(), 2);
        d.feed(&[0, 0, 0, 4, 0, 0, 2, 1], &mut out).unwrap();
        assert_eq!(
            out[1],
            Pdu::Abort(Abort {
                source: 2,
                reason: 1
            })
        );
        d.finish().unwrap();
        assert!(d.error().is_none());
    }

    #[test]
    fn errors_carry_stream_offsets_and_stick() {
        let mut d = PduDecoder::new(100);
        let mut out = Vec::new();
        let err = d
            .feed(&[6, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0x42], &mut out)
            .unwrap_err();
        assert_eq!(out, vec![Pdu::ReleaseRp]);
        assert_eq!((err.kind, err.offset), (PduErrorKind::UnknownPduType, 10));
        assert_eq!(d.error(), Some(&err));
        assert_eq!(d.feed(&[5], &mut out).unwrap_err(), err);
        assert_eq!(d.finish().unwrap_err(), err);
    }

    #[test]
    fn a_pdv_is_preallocated_only_within_the_limit() {
        // No limit: a PDV declaring nearly 4 GiB gets a bounded buffer.
        let mut d = PduDecoder::new(0);
        let mut out = Vec::new();
        d.feed(
            &[
                4, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF9, 1, 2, 9,
            ],
            &mut out,
        )
        .unwrap();
        let State::PData { pdvs, .. } = &d.state else {
            panic!("inside a P-DATA-TF");
        };
        assert_eq!(pdvs[0].data, [9]);
        assert!(pdvs[0].data.capacity() <= UNLIMITED_PREALLOC);
    }

    #[test]
    fn short_association_pdus_fail_at_their_header() {
        let err = decode_all(&[2, 0, 0, 0, 0, 67], 0).unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::LengthMismatch, 2));
    }
}
