//! The request-response codec of `/walrus/sync/2` (and of `/walrus/sync/1`,
//! only to refuse its requests): each request and each
//! response is a 4-byte big-endian length followed by that many bytes of
//! CBOR (a `SyncRequest` or `SyncResponse`), with a limit checked before
//! anything is allocated.
//!
//! An oversize request is read as [`RequestFrame::TooLarge`] rather than as
//! an error, so that the node sees it and counts it against the peer
//! (libp2p reports no event for a request whose reading failed). An
//! oversize response fails the request with an `InvalidData` error (not a
//! fault: a responder sizes answers by its own limits).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Protocol id of anti-entropy requests.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/walrus/sync/2");
/// The previous protocol's id: its requests are answered with a refusal
/// that names this version, so an old peer sees why, and blames nobody.
pub const SYNC_PROTOCOL_V1: StreamProtocol = StreamProtocol::new("/walrus/sync/1");

/// Length-prefixed, size-limited byte frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Largest request body accepted.
    pub max_request: usize,
    /// Largest response body accepted.
    pub max_response: usize,
}

/// A sync request as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFrame {
    /// Its bytes (at most the limit).
    Bytes(Vec<u8>),
    /// A request of the previous protocol (`/walrus/sync/1`), its
    /// bytes (at most the limit): only refused.
    Previous(Vec<u8>),
    /// It announced more bytes than the limit; they were not read.
    TooLarge {
        /// The length it announced.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
}

impl From<Vec<u8>> for RequestFrame {
    fn from(bytes: Vec<u8>) -> RequestFrame {
        RequestFrame::Bytes(bytes)
    }
}

async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    Ok(u32::from_be_bytes(len) as usize)
}

/// Memory committed to a body before its bytes arrive: a peer that
/// announces a large frame must send it to make the reader allocate it.
const INITIAL_BODY_CAPACITY: usize = 64 << 10;

async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    io.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended after {} of {len} announced bytes", body.len()),
        ));
    }
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RequestFrame> {
        let len = read_len(io).await?;
        if len > self.max_request {
            return Ok(RequestFrame::TooLarge { len, limit: self.max_request });
        }
        let body = read_body(io, len).await?;
        if *protocol == SYNC_PROTOCOL_V1 {
            return Ok(RequestFrame::Previous(body));
        }
        Ok(RequestFrame::Bytes(body))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let len = read_len(io).await?;
        if len > self.max_response {
            let limit = self.max_response;
            let e = format!("sync response of {len} bytes exceeds the limit of {limit} bytes");
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        read_body(io, len).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RequestFrame,
    ) -> io::Result<()> {
        match req {
            RequestFrame::Bytes(bytes) | RequestFrame::Previous(bytes) => write_frame(io, &bytes).await,
            RequestFrame::TooLarge { len, .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a request of {len} bytes that was never read cannot be sent"),
            )),
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let mut codec = FrameCodec { max_request: 8, max_response: 100 };
        let mut wire = Cursor::new(Vec::new());
        block_on(codec.write_request(&SYNC_PROTOCOL, &mut wire, b"hello".to_vec().into())).unwrap();
        let bytes = wire.into_inner();
        assert_eq!(bytes, b"\0\0\0\x05hello");
        let read = block_on(codec.read_request(&SYNC_PROTOCOL, &mut Cursor::new(bytes.clone())));
        assert_eq!(read.unwrap(), RequestFrame::Bytes(b"hello".to_vec()));

        // A request over the limit: read as such from the prefix alone.
        let big = [&[0u8, 0, 0, 9][..], b"123456789"].concat();
        let read = block_on(codec.read_request(&SYNC_PROTOCOL, &mut Cursor::new(big))).unwrap();
        assert_eq!(read, RequestFrame::TooLarge { len: 9, limit: 8 });
        let sent = block_on(codec.write_request(&SYNC_PROTOCOL, &mut Cursor::new(Vec::new()), read));
        assert!(sent.is_err(), "an unread request cannot be sent on");
        // A huge claimed length allocates nothing.
        let huge = b"\xff\xff\xff\xff".to_vec();
        let read = block_on(codec.read_request(&SYNC_PROTOCOL, &mut Cursor::new(huge.clone()))).unwrap();
        assert_eq!(read, RequestFrame::TooLarge { len: u32::MAX as usize, limit: 8 });

        // A response over the limit: an error that says so.
        let big = [&[0u8, 0, 0, 101][..], &[7u8; 101][..]].concat();
        let err = block_on(codec.read_response(&SYNC_PROTOCOL, &mut Cursor::new(big))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "sync response of 101 bytes exceeds the limit of 100 bytes");
        let err = block_on(codec.read_response(&SYNC_PROTOCOL, &mut Cursor::new(huge))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err:?}");
        // A prefix that promises more than arrives: not the peer's fault
        // (a connection going away looks the same).
        let short = b"\0\0\0\x20abc".to_vec();
        let err = block_on(codec.read_response(&SYNC_PROTOCOL, &mut Cursor::new(short))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err:?}");
    }
}
