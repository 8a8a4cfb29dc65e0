//! The control protocol between the dataplane, the control service and `podpathctl`.
//!
//! A connection starts with [`Request::Hello`]; the server answers with its own
//! version or a [`ErrorKind::Version`] error. Every message is a frame: a 4-byte
//! big-endian length, then an [`Envelope`] encoded with postcard (a compact, stable
//! serde format). Frames above [`MAX_FRAME_LEN`] are refused, and a body grows as its bytes arrive.
//! Requests carry an id the response repeats. `docs/protocol.md` lists every message.
pub mod batch;
pub mod capture;
pub mod client;
pub mod codec;
pub mod msg;
pub mod render;
pub mod server;
pub mod validate;

pub use capture::{CaptureFilter, CaptureSpec, CapturedPacket, SNAP_MAX};
pub use client::{Client, ClientError};
pub use codec::{read_frame, write_frame, CodecError, MAX_FRAME_LEN};
pub use msg::*;

/// Bumped on any incompatible change of the messages.
pub const PROTOCOL_VERSION: u32 = 7;
