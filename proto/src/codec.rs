//! Framing: a 4-byte big-endian length, then a postcard-encoded value.
use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// The largest frame either end accepts (64 MiB: a node's whole state at cluster
/// scale, 10 000 Services with 100 000 endpoints, is about 2.5 MB).
pub const MAX_FRAME_LEN: u32 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_LEN}")]
    TooLarge(u64),
    #[error("undecodable frame: {0}")]
    Decode(postcard::Error),
    #[error("{0} bytes after the message in its frame")]
    Trailing(usize),
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    let body = postcard::to_stdvec(v).map_err(CodecError::Encode)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME_LEN)
        .ok_or(CodecError::TooLarge(body.len() as u64))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one frame body (without the length prefix).
/// One whole value: bytes left after it make the frame invalid (a request that
/// decodes is not taken with junk behind it).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (v, rest) = postcard::take_from_bytes(body).map_err(CodecError::Decode)?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(CodecError::Trailing(rest.len()))
    }
}

pub fn write_frame<W: Write, T: Serialize>(w: &mut W, v: &T) -> Result<(), CodecError> {
    w.write_all(&encode(v)?)?;
    w.flush()?;
    Ok(())
}

pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, CodecError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(u64::from(len)));
    }
    // Grown as bytes arrive, not allocated from the claimed length: a peer that
    // announces a large frame and sends nothing holds no memory for it.
    let mut body = Vec::with_capacity((len as usize).min(64 << 10));
    let got = r.take(u64::from(len)).read_to_end(&mut body)?;
    if got < len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;
    use proptest::prelude::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = encode(&v).unwrap();
        let back: T = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn every_request_round_trips() {
        for r in sample_requests() {
            round_trip(Envelope { id: 7, body: r });
        }
    }

    #[test]
    fn every_response_round_trips() {
        for r in sample_responses() {
            round_trip(Envelope { id: 9, body: r });
        }
    }

    #[test]
    fn a_valid_message_with_junk_behind_it_is_refused() {
        let mut body = postcard::to_stdvec(&Envelope {
            id: 1,
            body: Request::Ping,
        })
        .unwrap();
        assert!(decode::<Envelope<Request>>(&body).is_ok());
        body.extend_from_slice(b"junk");
        assert!(matches!(
            decode::<Envelope<Request>>(&body),
            Err(CodecError::Trailing(4))
        ));
    }

    #[test]
    fn oversized_frame_refused_before_reading() {
        let mut b = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        let r: Result<Envelope<Request>, _> = read_frame(&mut &b[..]);
        assert!(matches!(r, Err(CodecError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Envelope<Request>>(&body);
            let _ = decode::<Envelope<Response>>(&body);
        }

        #[test]
        fn truncated_frames_are_errors(cut in 0usize..64, which in 0usize..22) {
            let reqs = sample_requests();
            let v = Envelope { id: 1, body: reqs[which % reqs.len()].clone() };
            let bytes = encode(&v).unwrap();
            let cut = cut.min(bytes.len() - 1);
            let r: Result<Envelope<Request>, _> = read_frame(&mut &bytes[..cut]);
            prop_assert!(r.is_err());
        }
    }
}
