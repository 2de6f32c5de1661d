//! lameduck's own limit on an HTTP/1 request head, checked on the bytes as they arrive,
//! below hyper's read buffer: hyper answers a head over its buffer with an empty 431 and
//! offers no hook, so lameduck stops first and answers itself, with the JSON error body
//! every other error has (code `headers_too_large`).
//!
//! Counting is one addition per read while a head is in progress; only a read that takes
//! the count over the limit is scanned for the head's end (its body may share the read).
//! HTTP/2 connections (the preface) are not counted: `max_header_list_size` applies there.

/// How a head stands after some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadCheck {
    /// Within the limit (or not counted).
    Fine,
    /// Over the limit: answer 431 and close.
    TooLarge,
    /// More header fields than hyper takes (it refuses the head; lameduck words the 431).
    TooMany,
}

/// The byte count of the request head in progress on one connection.
#[derive(Debug)]
pub(crate) struct HeadLimit {
    limit: usize,
    len: usize,
    /// The last bytes counted, for a head end split between two reads.
    tail: [u8; 3],
    /// The head in progress has ended (its end was seen): count nothing until the next.
    ended: bool,
    /// Nothing has been read yet (the HTTP/2 preface is recognised on the first read).
    first: bool,
    /// Not counted: an HTTP/2 connection.
    off: bool,
}

/// The HTTP/2 client preface's start.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl HeadLimit {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            len: 0,
            tail: [0; 3],
            ended: false,
            first: true,
            off: false,
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A new request head starts (the previous request was handed over).
    pub(crate) fn new_head(&mut self) {
        self.len = 0;
        self.tail = [0; 3];
        self.ended = false;
    }

    /// `bytes` arrived while no request is in progress.
    #[inline]
    pub(crate) fn on_bytes(&mut self, bytes: &[u8]) -> HeadCheck {
        if self.first {
            self.first = false;
            self.off = bytes.starts_with(H2_PREFACE);
        }
        if self.off || self.ended || bytes.is_empty() {
            return HeadCheck::Fine;
        }
        if self.len + bytes.len() <= self.limit {
            self.len += bytes.len();
            self.remember_tail(bytes);
            return HeadCheck::Fine;
        }
        match head_end(&self.tail, bytes) {
            Some(end) if self.len + end <= self.limit => {
                self.ended = true;
                HeadCheck::Fine
            }
            _ => HeadCheck::TooLarge,
        }
    }

    fn remember_tail(&mut self, bytes: &[u8]) {
        match *bytes {
            [.., a, b, c] => self.tail = [a, b, c],
            [a, b] => self.tail = [self.tail[2], a, b],
            [a] => self.tail = [self.tail[1], self.tail[2], a],
            [] => {}
        }
    }
}

/// How many bytes of `bytes` belong to a head that ends in them (`\r\n\r\n`, or `\n\n`
/// which hyper accepts too), with `tail` the bytes just before; `None` when it does not
/// end here.
fn head_end(tail: &[u8; 3], bytes: &[u8]) -> Option<usize> {
    let mut window = *tail;
    for (i, &b) in bytes.iter().enumerate() {
        let ends = b == b'\n' && (window[2] == b'\n' || (window[2] == b'\r' && window[1] == b'\n'));
        if ends {
            return Some(i + 1);
        }
        window = [window[1], window[2], b];
    }
    None
}

/// Most header fields in a request head: hyper's own limit, which lameduck keeps (a
/// larger one makes hyper allocate the field table on the heap for every request).
pub(crate) const MAX_HEADER_FIELDS: usize = 100;

/// The answer to a head over `limit` bytes, or (`check` [`HeadCheck::TooMany`]) with more
/// than [`MAX_HEADER_FIELDS`] fields, written by lameduck on the socket.
pub(crate) fn too_large_response(check: HeadCheck, limit: usize) -> Vec<u8> {
    let message = match check {
        HeadCheck::TooMany => {
            format!("request head has more than {MAX_HEADER_FIELDS} header fields")
        }
        _ => format!("request head is over the limit of {limit} bytes"),
    };
    let mut body = String::new();
    body.push_str(r#"{"error":{"code":"headers_too_large","message":"#);
    crate::json::push_string(&mut body, &message);
    body.push_str("}}");
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_within_the_limit_pass_in_any_split() {
        let head = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        for split in 0..head.len() {
            let mut h = HeadLimit::new(head.len());
            assert_eq!(h.on_bytes(&head[..split]), HeadCheck::Fine);
            assert_eq!(
                h.on_bytes(&head[split..]),
                HeadCheck::Fine,
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let mut h = HeadLimit::new(32);
        assert_eq!(h.on_bytes(b"GET / HTTP/1.1\r\nx-long: "), HeadCheck::Fine);
        assert_eq!(h.on_bytes(&[b'a'; 40]), HeadCheck::TooLarge);
    }

    #[test]
    fn a_body_in_the_same_read_as_a_small_head_is_not_counted() {
        let mut h = HeadLimit::new(64);
        let mut read = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n".to_vec();
        read.extend_from_slice(&[b'b'; 1000]);
        assert_eq!(h.on_bytes(&read), HeadCheck::Fine);
        assert_eq!(h.on_bytes(&[b'b'; 4000]), HeadCheck::Fine, "the head ended");
        // The end split between two reads: "\r\n\r" | "\n" + body.
        let mut h = HeadLimit::new(40);
        assert_eq!(
            h.on_bytes(b"POST / HTTP/1.1\r\nhost: x\r\n\r"),
            HeadCheck::Fine
        );
        let mut rest = b"\n".to_vec();
        rest.extend_from_slice(&[b'b'; 100]);
        assert_eq!(h.on_bytes(&rest), HeadCheck::Fine);
    }

    #[test]
    fn each_request_head_is_counted_on_its_own() {
        let head = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut h = HeadLimit::new(head.len());
        for _ in 0..100 {
            h.new_head();
            assert_eq!(h.on_bytes(head), HeadCheck::Fine);
        }
    }

    #[test]
    fn the_answer_to_too_many_fields_says_so() {
        let text = String::from_utf8(too_large_response(HeadCheck::TooMany, 65536)).unwrap();
        assert!(text.contains("more than 100 header fields"), "{text}");
    }

    #[test]
    fn http2_connections_are_not_counted() {
        let mut h = HeadLimit::new(16);
        assert_eq!(
            h.on_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            HeadCheck::Fine
        );
        assert_eq!(h.on_bytes(&[0u8; 100_000]), HeadCheck::Fine);
    }

    #[test]
    fn the_answer_is_a_json_431_that_closes() {
        let text = String::from_utf8(too_large_response(HeadCheck::TooLarge, 65536)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
    }
}
