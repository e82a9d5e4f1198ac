//! The request-response codec of `/walrus/sync/1`: each request and each
//! response is a 4-byte big-endian length followed by that many bytes of
//! CBOR (a `SyncRequest` or `SyncResponse`), with a limit checked before
//! anything is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Protocol id of anti-entropy requests.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/walrus/sync/1");

/// Length-prefixed, size-limited byte frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Largest request body accepted.
    pub max_request: usize,
    /// Largest response body accepted.
    pub max_response: usize,
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
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
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.max_request, "sync request").await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.max_response, "sync response").await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req).await
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
    use libp2p::request_response::Codec;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let mut codec = FrameCodec { max_request: 8, max_response: 100 };
        let mut wire = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_request(&SYNC_PROTOCOL, &mut wire, b"hello".to_vec())).unwrap();
        let bytes = wire.into_inner();
        assert_eq!(bytes, b"\0\0\0\x05hello");
        let read = block_on(codec.read_request(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(bytes.clone())));
        assert_eq!(read.unwrap(), b"hello");
        // Over the limit: refused from the prefix alone.
        let big = [&[0u8, 0, 0, 9][..], b"123456789"].concat();
        let err = block_on(codec.read_request(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(big))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A prefix that promises more than arrives.
        let short = b"\0\0\0\x20abc".to_vec();
        assert!(block_on(codec.read_response(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(short))).is_err());
        // A huge claimed length allocates nothing.
        let huge = b"\xff\xff\xff\xff".to_vec();
        assert!(block_on(codec.read_response(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(huge))).is_err());
    }
}
