//! Wire messages of the sync protocol and their bounded CBOR codec.
//! docs/PROTOCOL.md describes every layout byte for byte.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::replica::{ActorId, ChainHash, Succession, VersionVector, MAX_SUCCESSIONS};

/// Longest document name, in bytes.
pub const MAX_DOC_NAME: usize = 128;

/// Most operations one gossip message or sync page may carry. Checked while
/// decoding, so a message of many tiny (or empty) entries cannot make the
/// receiver allocate far more than its size; a responder stops a page
/// before it.
pub const MAX_OPS_PER_MESSAGE: usize = 65_536;

/// Newly written operations of one document, pushed over gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    /// Document name.
    pub doc: String,
    /// A page of runs of operations (docs/PROTOCOL.md, "Pages").
    pub page: ByteBuf,
}

/// "Send me what I am missing": the requester's version vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Document name.
    pub doc: String,
    /// Operations the requester has applied, per actor.
    pub clock: VersionVector,
    /// Most operation bytes the requester wants in one answer.
    pub budget: u64,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// A page of missing operations, in an order the requester can apply.
    Ops {
        /// Document name.
        doc: String,
        /// A page of runs of operations (docs/PROTOCOL.md, "Pages").
        page: ByteBuf,
        /// More are missing: ask again with the updated version vector.
        more: bool,
    },
    /// Some missing operations were truncated: the responder's whole state
    /// and the operations it includes.
    Snapshot {
        /// Document name.
        doc: String,
        /// CBOR of the document state, in a compression frame
        /// (docs/PROTOCOL.md, "Pages").
        state: ByteBuf,
        /// Operations the state includes.
        clock: VersionVector,
        /// Successions the responder knows (writers' certified successors,
        /// who may appear in `clock`). Omitted when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "bounded_successions")]
        successions: Vec<Succession>,
        /// The hash of each actor's last operation the state includes,
        /// where the responder knows it: what the actor's next operation
        /// must follow. Omitted when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        heads: Vec<(ActorId, ChainHash)>,
    },
    /// The responder does not replicate this document.
    UnknownDoc {
        /// Document name.
        doc: String,
    },
    /// The responder could not answer (its reason, for logs only).
    Refused {
        /// Document name.
        doc: String,
        /// Why.
        reason: String,
    },
}

impl SyncResponse {
    /// The document this answer is about.
    pub fn doc(&self) -> &str {
        match self {
            SyncResponse::Ops { doc, .. }
            | SyncResponse::Snapshot { doc, .. }
            | SyncResponse::UnknownDoc { doc }
            | SyncResponse::Refused { doc, .. } => doc,
        }
    }

    /// What kind of answer this is, for logs: `ops`, `snapshot`,
    /// `unknown_doc` or `refused`.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncResponse::Ops { .. } => "ops",
            SyncResponse::Snapshot { .. } => "snapshot",
            SyncResponse::UnknownDoc { .. } => "unknown_doc",
            SyncResponse::Refused { .. } => "refused",
        }
    }
}

/// Decodes an array of at most [`MAX_SUCCESSIONS`] successions.
fn bounded_successions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Succession>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<Succession>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_SUCCESSIONS} successions")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Succession>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(c) = seq.next_element::<Succession>()? {
                if out.len() == MAX_SUCCESSIONS {
                    return Err(serde::de::Error::invalid_length(MAX_SUCCESSIONS + 1, &self));
                }
                out.push(c);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Visitor)
}

/// Size limits of incoming messages. Everything larger is refused before
/// it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest gossip message.
    pub max_gossip: usize,
    /// Largest sync request.
    pub max_request: usize,
    /// Largest sync response (a snapshot must fit).
    pub max_response: usize,
    /// Largest single encoded operation.
    pub max_op: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_gossip: 1 << 20, max_request: 1 << 20, max_response: 64 << 20, max_op: 1 << 20 }
    }
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Larger than its limit; not decoded.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Kind of message.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid CBOR of this message type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Kind of message.
        what: &'static str,
        /// Decoder's complaint.
        reason: String,
    },
    /// A document name that is empty, too long, or not the expected one.
    #[error("bad document name {0:?}")]
    BadDoc(String),
}

/// CBOR encoding of a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and these types always serialize.
    if let Err(e) = ciborium::into_writer(msg, &mut out) {
        tracing::error!(error = %e, "encoding a sync message failed");
    }
    out
}

/// Decodes untrusted bytes, refusing more than `limit` bytes first.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize, what: &'static str) -> Result<T, MessageError> {
    if bytes.len() > limit {
        return Err(MessageError::TooLarge { what, len: bytes.len(), limit });
    }
    ciborium::de::from_reader_with_recursion_limit(bytes, 64)
        .map_err(|e| MessageError::Malformed { what, reason: e.to_string() })
}

/// Checks a document name: 1 to [`MAX_DOC_NAME`] bytes, no control characters.
pub fn check_doc_name(doc: &str) -> Result<(), MessageError> {
    if doc.is_empty() || doc.len() > MAX_DOC_NAME || doc.chars().any(char::is_control) {
        return Err(MessageError::BadDoc(doc.chars().take(MAX_DOC_NAME).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let mut clock = VersionVector::default();
        clock.observe(ActorId([7; 32]), 42);
        let req = SyncRequest { doc: "notes".into(), clock: clock.clone(), budget: 1000 };
        assert_eq!(decode::<SyncRequest>(&encode(&req), 1 << 10, "request").unwrap(), req);
        let resp = SyncResponse::Ops { doc: "notes".into(), page: ByteBuf::from(vec![1, 2, 3]), more: true };
        assert_eq!(decode::<SyncResponse>(&encode(&resp), 1 << 10, "response").unwrap(), resp);
        let snap = SyncResponse::Snapshot {
            doc: "n".into(),
            state: ByteBuf::from(vec![0xa0]),
            clock,
            successions: Vec::new(),
            heads: vec![(ActorId([7; 32]), ChainHash([8; 32]))],
        };
        assert_eq!(decode::<SyncResponse>(&encode(&snap), 1 << 10, "response").unwrap(), snap);
        let g = Gossip { doc: "n".into(), page: ByteBuf::from(vec![9; 40]) };
        let bytes = encode(&g);
        assert_eq!(decode::<Gossip>(&bytes, 1 << 10, "gossip").unwrap(), g);
        assert!(matches!(decode::<Gossip>(&bytes, 10, "gossip"), Err(MessageError::TooLarge { .. })));
        assert!(matches!(decode::<SyncRequest>(&bytes, 1 << 10, "request"), Err(MessageError::Malformed { .. })));
    }

    #[test]
    fn doc_names() {
        assert!(check_doc_name("default").is_ok());
        assert!(check_doc_name("").is_err());
        assert!(check_doc_name(&"x".repeat(MAX_DOC_NAME + 1)).is_err());
        assert!(check_doc_name("a\nb").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Gossip>(&bytes, 256, "gossip");
            let _ = decode::<SyncRequest>(&bytes, 256, "request");
            let _ = decode::<SyncResponse>(&bytes, 256, "response");
        }
    }
}
