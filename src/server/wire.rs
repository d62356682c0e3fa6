//! MongoDB wire protocol framing: the 16-byte header, OP_MSG (body and document sequences),
//! the legacy OP_QUERY handshake and its OP_REPLY answer.

use crate::server::error::ServerError;
use crate::server::limits::{check_bson, check_message_document};
use bson::{Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use std::fmt;
use std::sync::Arc;

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

pub const HEADER_LEN: usize = 16;
/// Largest message a client may send (the `maxMessageSizeBytes` the server advertises).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;

const FLAG_CHECKSUM_PRESENT: u32 = 1;
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits a server must understand (the low 16); anything else there is a protocol error.
const KNOWN_REQUIRED_FLAGS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;

/// Why a message could not be turned into a request.
#[derive(Debug)]
pub enum WireError {
    /// The stream can no longer be trusted (framing, flags, checksum): close the connection.
    Close(String),
    /// The message is well framed but a document in it is refused: answer with this error,
    /// as mongod does for errors that are not connection-fatal.
    Reply(ServerError),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Close(msg) => f.write_str(msg),
            WireError::Reply(e) => write!(f, "{e}"),
        }
    }
}

impl From<String> for WireError {
    fn from(msg: String) -> Self {
        WireError::Close(msg)
    }
}

impl From<&str> for WireError {
    fn from(msg: &str) -> Self {
        WireError::Close(msg.to_string())
    }
}

/// Size and nesting checks on one document of a message, before anything decodes it.
fn check_document(bytes: &[u8]) -> Result<(), WireError> {
    check_message_document(bytes.len()).map_err(WireError::Reply)?;
    check_bson(bytes).map_err(|fault| WireError::Reply(fault.to_error()))
}

/// CRC-32C (Castagnoli), the OP_MSG checksum (OP_MSG specification, "checksumPresent").
pub fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        table
    });
    !bytes.iter().fold(!0u32, |c, b| {
        table[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Checks an OP_MSG's trailing checksum when its flags say one is present. A mismatch is
/// `ChecksumMismatch`, which mongod treats as connection-fatal.
pub fn verify_checksum(head: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), String> {
    if payload.len() < 4 {
        return Ok(()); // too short for flags: parse_op_msg reports it
    }
    let flags = u32::from_le_bytes(payload[0..4].try_into().unwrap());
    if flags & FLAG_CHECKSUM_PRESENT == 0 {
        return Ok(());
    }
    if payload.len() < 8 {
        return Err("OP_MSG checksum missing".into());
    }
    let (covered, sum) = payload.split_at(payload.len() - 4);
    let expected = u32::from_le_bytes(sum.try_into().unwrap());
    let mut crc_input = Vec::with_capacity(HEADER_LEN + covered.len());
    crc_input.extend_from_slice(head);
    crc_input.extend_from_slice(covered);
    if crc32c(&crc_input) != expected {
        return Err("OP_MSG checksum does not match contents".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub length: usize,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, String> {
        let length = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
        if length < HEADER_LEN as i32 || length as usize > MAX_MESSAGE_SIZE {
            return Err(format!("invalid message length {length}"));
        }
        Ok(Header {
            length: length as usize,
            request_id: i32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            response_to: i32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            op_code: i32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        })
    }
}

/// A command's body with its document sequences merged in as arrays, except an insert's
/// `documents`: those stay as the bytes the client sent (already validated), since they are
/// stored and logged as they are.
#[derive(Debug, Default)]
pub struct Command {
    pub body: Document,
    /// Shared, so storing a document costs no copy.
    pub raw_documents: Option<Vec<Arc<RawDocumentBuf>>>,
}

impl std::ops::Deref for Command {
    type Target = Document;
    fn deref(&self) -> &Document {
        &self.body
    }
}

impl From<Document> for Command {
    fn from(body: Document) -> Command {
        Command {
            body,
            raw_documents: None,
        }
    }
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub body: Command,
    /// The client asked for no reply (OP_MSG moreToCome).
    pub more_to_come: bool,
    /// Legacy OP_QUERY: the answer must be an OP_REPLY.
    pub legacy: bool,
    /// OP_MSG exhaustAllowed: a getMore may be answered by a stream of replies.
    pub exhaust_allowed: bool,
}

fn read_cstring(buf: &[u8]) -> Result<(&str, &[u8]), String> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or("unterminated cstring")?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| "cstring is not UTF-8")?;
    Ok((s, &buf[end + 1..]))
}

/// Splits the bytes of one BSON document off the front of `buf`.
fn split_document(buf: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if buf.len() < 5 {
        return Err("truncated BSON document".into());
    }
    let len = i32::from_le_bytes(buf[0..4].try_into().unwrap());
    if len < 5 || len as usize > buf.len() {
        return Err(format!("invalid BSON document length {len}"));
    }
    Ok(buf.split_at(len as usize))
}

/// Splits one BSON document off the front of `buf`.
fn read_document(buf: &[u8]) -> Result<(Document, &[u8]), WireError> {
    let (doc_bytes, rest) = split_document(buf)?;
    check_document(doc_bytes)?;
    let doc = Document::from_reader(doc_bytes).map_err(|e| format!("invalid BSON: {e}"))?;
    Ok((doc, rest))
}

/// Checks every element of a document, nested ones included, as decoding would (framing,
/// element types, UTF-8), without building it.
fn validate(doc: &RawDocument) -> Result<(), bson::raw::Error> {
    for element in doc.iter() {
        let (_, value) = element?;
        validate_value(value)?;
    }
    Ok(())
}

fn validate_value(value: RawBsonRef<'_>) -> Result<(), bson::raw::Error> {
    match value {
        RawBsonRef::Document(d) => validate(d),
        RawBsonRef::Array(a) => {
            for v in a {
                validate_value(v?)?;
            }
            Ok(())
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => validate(c.scope),
        _ => Ok(()),
    }
}

/// Decodes a command body; an insert's `documents` array is kept as validated bytes.
fn decode_body(bytes: &[u8]) -> Result<(Document, Option<Vec<RawDocumentBuf>>), String> {
    let invalid = |e: bson::raw::Error| format!("invalid BSON: {e}");
    let raw = RawDocument::from_bytes(bytes).map_err(invalid)?;
    let is_insert = matches!(raw.iter().next(), Some(Ok(("insert", _))));
    if !is_insert {
        let doc = Document::from_reader(bytes).map_err(|e| format!("invalid BSON: {e}"))?;
        return Ok((doc, None));
    }
    let mut body = Document::new();
    let mut documents = None;
    for element in raw.iter() {
        let (key, value) = element.map_err(invalid)?;
        if key == "documents" && documents.is_none() {
            if let Some(docs) = raw_documents_of(value).map_err(invalid)? {
                documents = Some(docs);
                continue;
            }
        }
        let value =
            Bson::try_from(value.to_raw_bson()).map_err(|e| format!("invalid BSON: {e}"))?;
        body.insert(key, value);
    }
    Ok((body, documents))
}

/// The elements of an array of documents, validated; `None` when it is not one (the command
/// then reports the wrong type).
fn raw_documents_of(
    value: RawBsonRef<'_>,
) -> Result<Option<Vec<RawDocumentBuf>>, bson::raw::Error> {
    let RawBsonRef::Array(items) = value else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for item in items {
        let RawBsonRef::Document(d) = item? else {
            return Ok(None);
        };
        validate(d)?;
        out.push(d.to_raw_document_buf());
    }
    Ok(Some(out))
}

/// Parses the part of an OP_MSG after the header.
pub fn parse_op_msg(payload: &[u8]) -> Result<Request, WireError> {
    if payload.len() < 5 {
        return Err("OP_MSG too short".into());
    }
    let flags = u32::from_le_bytes(payload[0..4].try_into().unwrap());
    if flags & 0xffff & !KNOWN_REQUIRED_FLAGS != 0 {
        return Err(format!("unrecognized required OP_MSG flag bits {flags:#x}").into());
    }
    let _ = FLAG_EXHAUST_ALLOWED; // accepted and ignored: every request gets exactly one reply
    let mut rest = &payload[4..];
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        if rest.len() < 4 {
            return Err("OP_MSG checksum missing".into());
        }
        rest = &rest[..rest.len() - 4];
    }
    let mut body: Option<&[u8]> = None;
    let mut sequences: Vec<(String, Vec<RawDocumentBuf>)> = Vec::new();
    while !rest.is_empty() {
        let kind = rest[0];
        rest = &rest[1..];
        match kind {
            0 => {
                if body.is_some() {
                    return Err("Multiple body sections in message".into());
                }
                let (bytes, r) = split_document(rest)?;
                check_document(bytes)?;
                body = Some(bytes);
                rest = r;
            }
            1 => {
                if rest.len() < 4 {
                    return Err("truncated document sequence".into());
                }
                let size = i32::from_le_bytes(rest[0..4].try_into().unwrap());
                if size < 5 || size as usize > rest.len() {
                    return Err(format!("invalid document sequence size {size}").into());
                }
                let (section, r) = rest.split_at(size as usize);
                rest = r;
                let (identifier, mut docs_bytes) = read_cstring(&section[4..])?;
                let mut docs = Vec::new();
                while !docs_bytes.is_empty() {
                    let (bytes, r) = split_document(docs_bytes)?;
                    check_document(bytes)?;
                    let doc = RawDocumentBuf::from_bytes(bytes.to_vec())
                        .map_err(|e| format!("invalid BSON: {e}"))?;
                    validate(&doc).map_err(|e| format!("invalid BSON: {e}"))?;
                    docs.push(doc);
                    docs_bytes = r;
                }
                if sequences.iter().any(|(id, _)| id == identifier) {
                    return Err(format!("Duplicate document sequence: {identifier}").into());
                }
                sequences.push((identifier.to_string(), docs));
            }
            other => return Err(format!("Unknown section kind {other}").into()),
        }
    }
    let body = body.ok_or("OP_MSG messages must have a body")?;
    let (mut body, raw_documents) = decode_body(body)?;
    let mut raw_documents: Option<Vec<Arc<RawDocumentBuf>>> =
        raw_documents.map(|docs| docs.into_iter().map(Arc::new).collect());
    let is_insert = body.keys().next().map(String::as_str) == Some("insert");
    for (identifier, docs) in sequences {
        let in_body = body.contains_key(&identifier)
            || (identifier == "documents" && raw_documents.is_some());
        if in_body {
            return Err(format!(
                "'{identifier}' may not appear both as a field and as a document sequence"
            )
            .into());
        }
        if is_insert && identifier == "documents" {
            raw_documents = Some(docs.into_iter().map(Arc::new).collect());
            continue;
        }
        let docs = docs
            .iter()
            .map(|d| Document::try_from(d.as_ref()).map(Bson::Document))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid BSON: {e}"))?;
        body.insert(identifier, docs);
    }
    Ok(Request {
        body: Command {
            body,
            raw_documents,
        },
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        legacy: false,
        exhaust_allowed: flags & FLAG_EXHAUST_ALLOWED != 0,
    })
}

/// Parses a legacy OP_QUERY; only commands on `<db>.$cmd` are meaningful.
pub fn parse_op_query(payload: &[u8]) -> Result<Request, WireError> {
    if payload.len() < 4 {
        return Err("OP_QUERY too short".into());
    }
    let (full_name, rest) = read_cstring(&payload[4..])?;
    if rest.len() < 8 {
        return Err("OP_QUERY too short".into());
    }
    let (mut query, _) = read_document(&rest[8..])?;
    if let Ok(inner) = query.get_document("$query") {
        query = inner.clone();
    }
    let db = full_name.strip_suffix(".$cmd").unwrap_or(full_name);
    if !query.contains_key("$db") {
        query.insert("$db", db);
    }
    Ok(Request {
        body: query.into(),
        more_to_come: false,
        legacy: true,
        exhaust_allowed: false,
    })
}

fn header_bytes(out: &mut Vec<u8>, request_id: i32, response_to: i32, op_code: i32) {
    out.extend_from_slice(&0i32.to_le_bytes()); // length, patched at the end
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn patch_length(out: &mut [u8]) {
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
}

/// An OP_MSG reply: flagBits 0 and a single kind-0 section, as drivers require.
pub fn encode_op_msg(request_id: i32, response_to: i32, body: &RawDocumentBuf) -> Vec<u8> {
    encode_op_msg_flags(request_id, response_to, body, 0)
}

/// An OP_MSG reply with `flags` (moreToCome for the replies of an exhaust stream but its last).
pub fn encode_op_msg_flags(
    request_id: i32,
    response_to: i32,
    body: &RawDocumentBuf,
    flags: u32,
) -> Vec<u8> {
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + bytes.len());
    header_bytes(&mut out, request_id, response_to, OP_MSG);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(bytes);
    patch_length(&mut out);
    out
}

/// An OP_REPLY to a legacy OP_QUERY command (responseFlags 8 = AwaitCapable, as mongod sends).
pub fn encode_op_reply(request_id: i32, response_to: i32, body: &RawDocumentBuf) -> Vec<u8> {
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + bytes.len());
    header_bytes(&mut out, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&8i32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(bytes);
    patch_length(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn op_msg_keeps_an_inserts_document_sequence_as_bytes() {
        // The insert example from the OP_MSG specification (header stripped).
        let msg = hex(
            "00 00 00 00 00 21 00 00 00 02 69 6e 73 65 72 74 00 02 00 00 00 63 00 \
             02 24 64 62 00 05 00 00 00 74 65 73 74 00 00 01 1c 00 00 00 \
             64 6f 63 75 6d 65 6e 74 73 00 0e 00 00 00 10 5f 69 64 00 01 00 00 00 00",
        );
        let req = parse_op_msg(&msg).unwrap();
        assert_eq!(req.body.body, doc! {"insert": "c", "$db": "test"});
        let docs = req.body.raw_documents.unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].to_document().unwrap(), doc! {"_id": 1});
        assert!(!req.more_to_come);
    }

    /// An OP_MSG with `body` and one document sequence.
    fn op_msg(body: &Document, identifier: &str, docs: &[Vec<u8>]) -> Vec<u8> {
        let mut msg = vec![0, 0, 0, 0, 0];
        msg.extend_from_slice(&bson::to_vec(body).unwrap());
        msg.push(1);
        let mut section = Vec::new();
        section.extend_from_slice(identifier.as_bytes());
        section.push(0);
        docs.iter().for_each(|d| section.extend_from_slice(d));
        msg.extend_from_slice(&((section.len() + 4) as i32).to_le_bytes());
        msg.extend_from_slice(&section);
        msg
    }

    #[test]
    fn other_document_sequences_merge_into_the_body() {
        let update = bson::to_vec(&doc! {"q": {}, "u": {"$set": {"a": 1}}}).unwrap();
        let msg = op_msg(&doc! {"update": "c", "$db": "test"}, "updates", &[update]);
        let req = parse_op_msg(&msg).unwrap();
        assert_eq!(
            req.body.body,
            doc! {"update": "c", "$db": "test", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}]}
        );
        assert!(req.body.raw_documents.is_none());
    }

    #[test]
    fn an_inserts_inline_documents_stay_bytes_unless_they_are_not_documents() {
        let mut msg = vec![0, 0, 0, 0, 0];
        let body = doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}], "$db": "test"};
        msg.extend_from_slice(&bson::to_vec(&body).unwrap());
        let req = parse_op_msg(&msg).unwrap();
        assert_eq!(req.body.body, doc! {"insert": "c", "$db": "test"});
        assert_eq!(req.body.raw_documents.unwrap().len(), 2);

        let mut msg = vec![0, 0, 0, 0, 0];
        let body = doc! {"insert": "c", "documents": [1], "$db": "test"};
        msg.extend_from_slice(&bson::to_vec(&body).unwrap());
        let req = parse_op_msg(&msg).unwrap();
        assert_eq!(req.body.body, body);
        assert!(req.body.raw_documents.is_none());
    }

    #[test]
    fn invalid_bson_in_an_insert_sequence_is_refused() {
        // {"s": <string whose byte is not UTF-8>} nested one level down.
        let inner: Vec<u8> = vec![14, 0, 0, 0, 2, b's', 0, 2, 0, 0, 0, 0xff, 0, 0];
        let mut outer = vec![0u8; 4];
        outer.extend_from_slice(&[3, b'd', 0]);
        outer.extend_from_slice(&inner);
        outer.push(0);
        let len = outer.len() as i32;
        outer[0..4].copy_from_slice(&len.to_le_bytes());
        let msg = op_msg(&doc! {"insert": "c", "$db": "test"}, "documents", &[outer]);
        assert!(parse_op_msg(&msg)
            .unwrap_err()
            .to_string()
            .contains("invalid BSON"));
    }

    #[test]
    fn op_msg_rejects_two_bodies_and_unknown_required_flags() {
        let body = bson::to_vec(&doc! {"ping": 1}).unwrap();
        let mut msg = vec![0, 0, 0, 0, 0];
        msg.extend_from_slice(&body);
        msg.push(0);
        msg.extend_from_slice(&body);
        assert!(parse_op_msg(&msg)
            .unwrap_err()
            .to_string()
            .contains("Multiple body"));
        let mut flagged = vec![4, 0, 0, 0, 0];
        flagged.extend_from_slice(&body);
        assert!(parse_op_msg(&flagged).is_err());
    }

    #[test]
    fn crc32c_and_checksums() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let mut payload = vec![1, 0, 0, 0, 0];
        payload.extend_from_slice(&bson::to_vec(&doc! {"ping": 1, "$db": "admin"}).unwrap());
        let len = (HEADER_LEN + payload.len() + 4) as i32;
        let mut head = [0u8; HEADER_LEN];
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
        let mut covered = head.to_vec();
        covered.extend_from_slice(&payload);
        let sum = crc32c(&covered);
        let mut good = payload.clone();
        good.extend_from_slice(&sum.to_le_bytes());
        assert!(verify_checksum(&head, &good).is_ok());
        assert!(parse_op_msg(&good).is_ok());
        let mut bad = payload;
        bad.extend_from_slice(&(sum ^ 1).to_le_bytes());
        assert!(verify_checksum(&head, &bad).is_err());
    }

    #[test]
    fn a_too_deep_body_is_an_error_reply_not_a_closed_connection() {
        let mut deep = doc! {"x": 1};
        for _ in 0..250 {
            deep = doc! {"a": deep};
        }
        let mut msg = vec![0, 0, 0, 0, 0];
        msg.extend_from_slice(&bson::to_vec(&doc! {"ping": 1, "d": deep}).unwrap());
        match parse_op_msg(&msg) {
            Err(WireError::Reply(e)) => assert_eq!(e.code, 15),
            other => panic!("expected an Overflow reply, got {other:?}"),
        }
    }

    #[test]
    fn op_query_handshake_from_the_reference_bytes() {
        let msg = hex(
            "00 00 00 00 61 64 6d 69 6e 2e 24 63 6d 64 00 00 00 00 00 ff ff ff ff \
             1d 00 00 00 10 69 73 6d 61 73 74 65 72 00 01 00 00 00 \
             08 68 65 6c 6c 6f 4f 6b 00 01 00",
        );
        let req = parse_op_query(&msg).unwrap();
        assert_eq!(
            req.body.body,
            doc! {"ismaster": 1, "helloOk": true, "$db": "admin"}
        );
        assert!(req.legacy);
    }

    #[test]
    fn replies_match_the_reference_bytes() {
        let ok = RawDocumentBuf::from_document(&doc! {"ok": 1.0}).unwrap();
        assert_eq!(
            encode_op_msg(2, 1, &ok),
            hex(
                "26 00 00 00 02 00 00 00 01 00 00 00 dd 07 00 00 00 00 00 00 \
                 00 11 00 00 00 01 6f 6b 00 00 00 00 00 00 00 f0 3f 00"
            )
        );
        assert_eq!(
            encode_op_reply(100, 1, &ok),
            hex(
                "35 00 00 00 64 00 00 00 01 00 00 00 01 00 00 00 08 00 00 00 \
                 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 \
                 11 00 00 00 01 6f 6b 00 00 00 00 00 00 00 f0 3f 00"
            )
        );
    }
}
