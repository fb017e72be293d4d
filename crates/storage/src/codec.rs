//! WAL record framing and payload encoding.
//!
//! A record is `[len: u32 LE][crc32c: u32 LE over type+payload][type: u8][payload]`
//! with `len = 1 + payload length`. Payloads are hand-encoded little-endian.

use bytes::Bytes;
use raftkv_raft::{Entry, EntryKind, HardState};

use crate::error::StorageError;

/// Bytes before the record type: length and checksum.
pub(crate) const HEADER_LEN: usize = 8;
/// The default (and usual) maximum of a record's `len` field.
pub const DEFAULT_MAX_RECORD_SIZE: u32 = 64 << 20;

const TYPE_ENTRIES: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_SNAPSHOT: u8 = 3;

/// Fixed bytes of one encoded entry besides its data: index, term, kind, data length.
const ENTRY_OVERHEAD: usize = 8 + 8 + 1 + 4;

/// "Entries at or below `index` are covered by the snapshot at (`index`, `term`)."
///
/// `keep_suffix` records the decision made when the snapshot was saved (Raft §7):
/// whether the entries above `index` survived (the log held `index` with `term`) or the
/// whole log was discarded. Recording it makes replay independent of deleted segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub index: u64,
    pub term: u64,
    pub keep_suffix: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Entries(Vec<Entry>),
    HardState(HardState),
    Snapshot(Marker),
}

/// Appends one framed record to `out`, or leaves `out` unchanged and fails if the
/// record would exceed `limit`.
fn frame(
    out: &mut Vec<u8>,
    ty: u8,
    payload_len: usize,
    limit: u32,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<(), StorageError> {
    let len = payload_len as u64 + 1;
    if len > u64::from(limit) {
        return Err(StorageError::RecordTooLarge { len, limit: u64::from(limit) });
    }
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(ty);
    write(out);
    debug_assert_eq!(out.len() - start - HEADER_LEN, len as usize, "payload length");
    let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

pub(crate) fn encode_entries(out: &mut Vec<u8>, entries: &[Entry], limit: u32) -> Result<(), StorageError> {
    let payload_len = 4 + entries.iter().map(|e| ENTRY_OVERHEAD + e.data.len()).sum::<usize>();
    frame(out, TYPE_ENTRIES, payload_len, limit, |out| {
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&e.term.to_le_bytes());
            out.push(e.kind.to_byte());
            // Cannot truncate: the record limit (a u32) bounds every data length.
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.data);
        }
    })
}

/// Term, vote (0 for none) and commit, then the recovering flag as one byte. A record
/// without the flag byte (written before it existed) reads as not recovering.
pub(crate) fn encode_hard_state(out: &mut Vec<u8>, hs: &HardState, limit: u32) -> Result<(), StorageError> {
    debug_assert_ne!(hs.vote, Some(0), "vote 0 means none on disk");
    frame(out, TYPE_HARD_STATE, 25, limit, |out| {
        out.extend_from_slice(&hs.term.to_le_bytes());
        out.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&hs.commit.to_le_bytes());
        out.push(u8::from(hs.recovering));
    })
}

pub(crate) fn encode_marker(out: &mut Vec<u8>, m: &Marker, limit: u32) -> Result<(), StorageError> {
    frame(out, TYPE_SNAPSHOT, 17, limit, |out| {
        out.extend_from_slice(&m.index.to_le_bytes());
        out.extend_from_slice(&m.term.to_le_bytes());
        out.push(u8::from(m.keep_suffix));
    })
}

/// What [`read_frame`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete record with a good checksum; the next one starts at `next`.
    Ok { ty: u8, payload: &'a [u8], next: usize },
    /// The file ends inside this record's header or payload.
    Incomplete(String),
    /// A complete record whose checksum does not match; `at_end` if nothing follows.
    BadChecksum { at_end: bool, reason: String },
    /// A length of zero or above the limit: never a torn write of ours.
    BadLength(String),
}

/// Reads the record framed at `buf[off..]` (`off < buf.len()`).
pub(crate) fn read_frame(buf: &[u8], off: usize, limit: u32) -> Frame<'_> {
    debug_assert!(off < buf.len());
    let rest = &buf[off..];
    if rest.len() < HEADER_LEN {
        return Frame::Incomplete(format!("record header cut short ({} of 8 bytes)", rest.len()));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > limit {
        return Frame::BadLength(format!("record length {len} is outside 1..={limit} (the maximum record size)"));
    }
    let body = &rest[HEADER_LEN..];
    if body.len() < len as usize {
        return Frame::Incomplete(format!("record payload cut short ({} of {len} bytes)", body.len()));
    }
    let body = &body[..len as usize];
    let actual = crc32c::crc32c(body);
    let next = off + HEADER_LEN + len as usize;
    if actual != crc {
        return Frame::BadChecksum {
            at_end: next == buf.len(),
            reason: format!("checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"),
        };
    }
    Frame::Ok { ty: body[0], payload: &body[1..], next }
}

/// A cursor over a payload; every read fails with a reason instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(format!(
                "truncated payload: needs {n} bytes at payload offset {}, {remaining} remain",
                self.pos
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} unexpected trailing bytes in payload")),
        }
    }
}

/// Decodes a checksummed record; errors describe why it is undecodable.
pub(crate) fn decode(ty: u8, payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(payload);
    let record = match ty {
        TYPE_ENTRIES => Record::Entries(decode_entries(&mut r)?),
        TYPE_HARD_STATE => {
            let (term, vote, commit) = (r.u64()?, r.u64()?, r.u64()?);
            let vote = (vote != 0).then_some(vote);
            let recovering = match r.remaining() {
                0 => false,
                _ => decode_flag(r.u8()?, "hard state recovering flag")?,
            };
            Record::HardState(HardState { term, vote, commit, recovering })
        }
        TYPE_SNAPSHOT => {
            let (index, term) = (r.u64()?, r.u64()?);
            let keep_suffix = decode_flag(r.u8()?, "snapshot marker flag")?;
            Record::Snapshot(Marker { index, term, keep_suffix })
        }
        other => return Err(format!("unknown record type {other}")),
    };
    r.finish()?;
    Ok(record)
}

fn decode_flag(byte: u8, what: &str) -> Result<bool, String> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!("{what} {b} is neither 0 nor 1")),
    }
}

fn decode_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, String> {
    let count = r.u32()? as usize;
    // Why the bound: never let a count read from disk pre-allocate more than the
    // payload could possibly hold.
    let mut entries = Vec::with_capacity(count.min(r.remaining() / ENTRY_OVERHEAD));
    for _ in 0..count {
        let (index, term, kind) = (r.u64()?, r.u64()?, r.u8()?);
        let kind = EntryKind::from_byte(kind).ok_or_else(|| format!("unknown entry kind {kind}"))?;
        let len = r.u32()? as usize;
        let data = Bytes::copy_from_slice(r.take(len)?);
        entries.push(Entry { index, term, kind, data });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &'static [u8]) -> Entry {
        Entry { index, term: 7, kind: EntryKind::Command, data: Bytes::from_static(data) }
    }

    fn roundtrip(buf: &[u8]) -> Record {
        match read_frame(buf, 0, DEFAULT_MAX_RECORD_SIZE) {
            Frame::Ok { ty, payload, next } => {
                assert_eq!(next, buf.len());
                decode(ty, payload).unwrap()
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        let entries = vec![entry(1, b"a"), entry(2, b"")];
        encode_entries(&mut buf, &entries, DEFAULT_MAX_RECORD_SIZE).unwrap();
        assert_eq!(roundtrip(&buf), Record::Entries(entries));

        for recovering in [false, true] {
            let hs = HardState { term: 3, vote: Some(2), commit: 9, recovering };
            buf.clear();
            encode_hard_state(&mut buf, &hs, DEFAULT_MAX_RECORD_SIZE).unwrap();
            assert_eq!(buf.len(), HEADER_LEN + 26);
            assert_eq!(roundtrip(&buf), Record::HardState(hs));
        }
        // A hard state written before the recovering flag existed: 24 bytes, not recovering.
        let old: Vec<u8> = [3u64, 2, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let hs = HardState { term: 3, vote: Some(2), commit: 9, recovering: false };
        assert_eq!(decode(TYPE_HARD_STATE, &old), Ok(Record::HardState(hs)));
        let mut bad = old.clone();
        bad.push(2);
        assert!(decode(TYPE_HARD_STATE, &bad).unwrap_err().contains("recovering flag 2"));

        let m = Marker { index: 5, term: 2, keep_suffix: true };
        buf.clear();
        encode_marker(&mut buf, &m, DEFAULT_MAX_RECORD_SIZE).unwrap();
        assert_eq!(roundtrip(&buf), Record::Snapshot(m));
    }

    #[test]
    fn oversized_record_is_refused_and_names_the_limit() {
        let mut buf = vec![1, 2, 3];
        let err = encode_entries(&mut buf, &[entry(1, b"0123456789")], 16).unwrap_err();
        assert!(matches!(err, StorageError::RecordTooLarge { limit: 16, .. }), "{err}");
        assert!(err.to_string().contains("16"), "{err}");
        assert_eq!(buf, [1, 2, 3], "a refused record leaves the buffer unchanged");
    }

    #[test]
    fn a_record_exactly_at_the_limit_is_written_and_read() {
        let mut buf = Vec::new();
        // A hard state's len (type byte + payload) is 26: a limit of 26 takes it.
        encode_hard_state(&mut buf, &HardState::default(), 26).unwrap();
        assert!(matches!(read_frame(&buf, 0, 26), Frame::Ok { .. }));
        assert!(matches!(read_frame(&buf, 0, 25), Frame::BadLength(_)));
        assert!(encode_hard_state(&mut Vec::new(), &HardState::default(), 25).is_err());
    }

    #[test]
    fn a_whole_header_is_judged_by_its_length() {
        // Eight bytes are a whole header: a zero length is bad, not a short header.
        assert!(matches!(read_frame(&[0; HEADER_LEN], 0, 1024), Frame::BadLength(_)));
        assert!(matches!(read_frame(&[0; HEADER_LEN - 1], 0, 1024), Frame::Incomplete(_)));
    }

    #[test]
    fn frames_classify_damage() {
        let mut buf = Vec::new();
        encode_hard_state(&mut buf, &HardState::default(), DEFAULT_MAX_RECORD_SIZE).unwrap();
        assert!(matches!(read_frame(&buf[..5], 0, 1024), Frame::Incomplete(_)));
        assert!(matches!(read_frame(&buf[..20], 0, 1024), Frame::Incomplete(_)));
        assert!(matches!(read_frame(&buf, 0, 8), Frame::BadLength(_)));
        let mut flipped = buf.clone();
        flipped[12] ^= 1;
        assert!(matches!(read_frame(&flipped, 0, 1024), Frame::BadChecksum { at_end: true, .. }));
        flipped.push(0);
        assert!(matches!(read_frame(&flipped, 0, 1024), Frame::BadChecksum { at_end: false, .. }));
    }

    #[test]
    fn undecodable_payloads_are_errors_not_panics() {
        assert!(decode(9, &[]).is_err());
        assert!(decode(TYPE_HARD_STATE, &[0; 23]).is_err());
        assert!(decode(TYPE_HARD_STATE, &[0; 26]).is_err());
        assert!(decode(TYPE_ENTRIES, &[5, 0, 0, 0]).is_err());
        let mut bad_kind = vec![1, 0, 0, 0];
        bad_kind.extend_from_slice(&[0; 16]);
        bad_kind.push(9);
        bad_kind.extend_from_slice(&[0; 4]);
        assert!(decode(TYPE_ENTRIES, &bad_kind).unwrap_err().contains("kind"));
        assert!(decode(TYPE_SNAPSHOT, &[0; 17].map(|_| 2)).is_err());
    }
}
