//! A blocking client: connect, say hello, send requests, read responses.
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::codec::{read_frame, write_frame, CodecError};
use crate::msg::{Envelope, ErrorReply, Request, Response};
use crate::PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {err} (is the dataplane running, and is this the right --socket?)")]
    Connect { path: String, err: std::io::Error },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{}", .0.message)]
    Server(ErrorReply),
    #[error("unexpected response to request {0}")]
    Unexpected(u64),
}

pub struct Client {
    stream: UnixStream,
    next_id: u64,
    /// The server's hello.
    pub server: String,
}

impl Client {
    pub fn connect(path: &Path, client: &str) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|err| ClientError::Connect {
            path: path.display().to_string(),
            err,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut c = Client {
            stream,
            next_id: 1,
            server: String::new(),
        };
        match c.call(Request::Hello {
            version: PROTOCOL_VERSION,
            client: client.into(),
        })? {
            Response::Hello { server, dpdk, .. } => {
                c.server = format!("{server} ({dpdk})");
                Ok(c)
            }
            _ => Err(ClientError::Unexpected(0)),
        }
    }

    /// Sends a request and waits for its response; server errors become `Err`.
    pub fn call(&mut self, body: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Envelope { id, body })?;
        let resp: Envelope<Response> = read_frame(&mut self.stream)?;
        if resp.id != id {
            // Id 0: the server's answer to no request (too many clients, a frame it
            // could not read): say what it said.
            if let (0, Response::Error(e)) = (resp.id, resp.body) {
                return Err(ClientError::Server(e));
            }
            return Err(ClientError::Unexpected(id));
        }
        match resp.body {
            Response::Error(e) => Err(ClientError::Server(e)),
            r => Ok(r),
        }
    }
}
