//! The ring's wire format: every message is a 48-byte little-endian header
//! and a payload of `len` bytes.
//!
//! | bytes | field | data frames | abort frames |
//! |---|---|---|---|
//! | 0..4 | magic `ADJC` | | |
//! | 4 | kind | 1 | 2 |
//! | 5 | op code | the call | the failed call |
//! | 6 | cause | 0 | [`CauseKind`] code |
//! | 8..16 | seq | the call's sequence number | the failed call's |
//! | 16..24 | total | elements (bytes for broadcast) of the buffer | timeout in ms |
//! | 24..28 | step | ring step | reporting rank |
//! | 28..32 | seg | segment in the step (all-to-all: source rank) | |
//! | 32..36 | peer | all-to-all: destination rank | rank at fault |
//! | 40..48 | len | payload bytes | detail bytes (UTF-8) |
//!
//! `f32` payloads are little-endian.

use std::time::Duration;

use super::{Cause, CauseKind, Op};

pub const HEADER: usize = 48;
const MAGIC: [u8; 4] = *b"ADJC";
/// Longest detail text an abort frame carries.
pub const MAX_DETAIL: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data = 1,
    Abort = 2,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub op: u8,
    pub cause: u8,
    pub seq: u64,
    pub total: u64,
    pub step: u32,
    pub seg: u32,
    pub peer: u32,
    pub len: u64,
}

impl Header {
    pub fn data(op: Op, seq: u64, total: usize, step: usize, seg: usize, len: usize) -> Header {
        Header {
            kind: Kind::Data,
            op: op.code(),
            cause: 0,
            seq,
            total: total as u64,
            step: step as u32,
            seg: seg as u32,
            peer: 0,
            len: len as u64,
        }
    }

    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.op;
        out[6] = self.cause;
        out[7] = 0;
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.total.to_le_bytes());
        out[24..28].copy_from_slice(&self.step.to_le_bytes());
        out[28..32].copy_from_slice(&self.seg.to_le_bytes());
        out[32..36].copy_from_slice(&self.peer.to_le_bytes());
        out[36..40].fill(0);
        out[40..48].copy_from_slice(&self.len.to_le_bytes());
    }

    /// Decodes a header; the error says what is wrong with the bytes.
    pub fn decode(b: &[u8; HEADER]) -> Result<Header, String> {
        if b[0..4] != MAGIC {
            return Err(format!(
                "bad magic {:02x?}: not an adjoint ring message",
                &b[0..4]
            ));
        }
        let kind = match b[4] {
            1 => Kind::Data,
            2 => Kind::Abort,
            k => return Err(format!("unknown message kind {k}")),
        };
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            op: b[5],
            cause: b[6],
            seq: u64_at(8),
            total: u64_at(16),
            step: u32_at(24),
            seg: u32_at(28),
            peer: u32_at(32),
            len: u64_at(40),
        })
    }

    /// The operation's name, or the unknown code.
    pub fn op_name(&self) -> String {
        Op::from_code(self.op).map_or_else(|| format!("op {}", self.op), |op| op.name().to_string())
    }
}

fn cause_code(kind: CauseKind) -> u8 {
    match kind {
        CauseKind::Lost => 1,
        CauseKind::Timeout => 2,
        CauseKind::Mismatch => 3,
        CauseKind::Closed => 4,
    }
}

/// An abort frame (header and detail) announcing `cause`.
pub fn abort_frame(cause: &Cause) -> Vec<u8> {
    let mut end = cause.detail.len().min(MAX_DETAIL);
    while !cause.detail.is_char_boundary(end) {
        end -= 1;
    }
    let detail = &cause.detail.as_bytes()[..end];
    let header = Header {
        kind: Kind::Abort,
        op: cause.op.code(),
        cause: cause_code(cause.kind),
        seq: cause.seq,
        total: cause.after.as_millis() as u64,
        step: cause.reporter as u32,
        seg: 0,
        peer: cause.peer as u32,
        len: detail.len() as u64,
    };
    let mut out = vec![0u8; HEADER + detail.len()];
    header.encode(&mut out);
    out[HEADER..].copy_from_slice(detail);
    out
}

/// The cause an abort frame announces.
pub fn abort_cause(h: &Header, detail: &[u8]) -> Result<Cause, String> {
    let kind = match h.cause {
        1 => CauseKind::Lost,
        2 => CauseKind::Timeout,
        3 => CauseKind::Mismatch,
        4 => CauseKind::Closed,
        c => return Err(format!("unknown abort cause {c}")),
    };
    let op = Op::from_code(h.op).ok_or_else(|| format!("unknown op code {}", h.op))?;
    Ok(Cause {
        kind,
        peer: h.peer as usize,
        reporter: h.step as usize,
        op,
        seq: h.seq,
        after: Duration::from_millis(h.total),
        detail: String::from_utf8_lossy(detail).into_owned(),
    })
}

/// Writes `src` as little-endian bytes into `out` (`4 * src.len()` bytes).
pub fn put_f32(out: &mut [u8], src: &[f32]) {
    let (chunks, _) = out.as_chunks_mut::<4>();
    for (o, x) in chunks.iter_mut().zip(src) {
        *o = x.to_le_bytes();
    }
}

/// Rounds every value to the nearest bf16 (ties to even), in place.
pub fn round_bf16(data: &mut [f32]) {
    for x in data {
        *x = half::bf16::from_f32(*x).to_f32();
    }
}

/// Writes `src` (bf16 values held in f32s) as little-endian bf16s.
pub fn put_bf16(out: &mut [u8], src: &[f32]) {
    let (chunks, _) = out.as_chunks_mut::<2>();
    for (o, x) in chunks.iter_mut().zip(src) {
        *o = half::bf16::from_f32(*x).to_le_bytes();
    }
}

/// Reads little-endian bf16s from `src` into `dst`.
pub fn get_bf16(dst: &mut [f32], src: &[u8]) {
    let (chunks, _) = src.as_chunks::<2>();
    for (d, c) in dst.iter_mut().zip(chunks) {
        *d = half::bf16::from_le_bytes(*c).to_f32();
    }
}

/// Adds little-endian bf16s from `src` into `dst`, rounding each sum to
/// bf16: `dst[i] = bf16(dst[i] + src[i])`.
pub fn add_bf16(dst: &mut [f32], src: &[u8]) {
    let (chunks, _) = src.as_chunks::<2>();
    for (d, c) in dst.iter_mut().zip(chunks) {
        *d = half::bf16::from_f32(*d + half::bf16::from_le_bytes(*c).to_f32()).to_f32();
    }
}

/// Reads little-endian `f32`s from `src` into `dst`.
pub fn get_f32(dst: &mut [f32], src: &[u8]) {
    let (chunks, _) = src.as_chunks::<4>();
    for (d, c) in dst.iter_mut().zip(chunks) {
        *d = f32::from_le_bytes(*c);
    }
}

/// Adds little-endian `f32`s from `src` into `dst`: `dst[i] = dst[i] + src[i]`.
pub fn add_f32(dst: &mut [f32], src: &[u8]) {
    let (chunks, _) = src.as_chunks::<4>();
    for (d, c) in dst.iter_mut().zip(chunks) {
        *d += f32::from_le_bytes(*c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header::data(Op::AllGather, 7, 1031, 3, 2, 4096);
        let mut b = [0u8; HEADER];
        h.encode(&mut b);
        assert_eq!(Header::decode(&b), Ok(h));
        b[0] = b'X';
        assert!(Header::decode(&b).is_err());
    }

    #[test]
    fn abort_frames_round_trip() {
        let cause = Cause {
            after: Duration::from_millis(250),
            ..Cause::new(
                CauseKind::Timeout,
                3,
                1,
                Op::Barrier,
                9,
                "é".repeat(MAX_DETAIL),
            )
        };
        let frame = abort_frame(&cause);
        let h = Header::decode(frame[..HEADER].try_into().unwrap()).unwrap();
        let back = abort_cause(&h, &frame[HEADER..]).unwrap();
        assert_eq!(back.detail.len(), MAX_DETAIL);
        assert_eq!(
            back,
            Cause {
                detail: back.detail.clone(),
                ..cause
            }
        );
    }

    #[test]
    fn f32_codecs() {
        let x = [1.5f32, -0.0, f32::MAX, 3.25];
        let mut b = [0u8; 16];
        put_f32(&mut b, &x);
        let mut y = [0f32; 4];
        get_f32(&mut y, &b);
        assert_eq!(x.map(f32::to_bits), y.map(f32::to_bits));
        add_f32(&mut y, &b);
        assert_eq!(y, [3.0, -0.0, f32::INFINITY, 6.5]);
    }
}
