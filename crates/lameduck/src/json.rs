//! The one piece of JSON writing the hot paths share: string literals, with what they must
//! escape found eight bytes at a time.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any byte of `x` is zero (exact as a yes/no).
const fn has_zero(x: u64) -> bool {
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether `b` must be escaped inside a JSON string: `"`, `\` and control characters.
const fn escaped(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// How many leading bytes of `s` can be copied into a JSON string literal as they are.
pub(crate) fn plain_len(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        // Below 0x20: subtracting 0x20 from such a byte borrows into its high bit.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            break;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&b| escaped(b))
        .unwrap_or(s.len() - i)
}

/// The escape sequences of the control characters, as `serde_json` writes them.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// The escape sequence for a byte [`plain_len`] stopped at.
fn escape(b: u8) -> &'static str {
    match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        c => CONTROL.get(usize::from(c)).copied().unwrap_or(""),
    }
}

/// Call `put` with the pieces of `s` escaped for a JSON string literal (without the
/// quotes): runs of plain text and escape sequences, in order. The one escaper behind
/// [`push_str`] and [`push_string`].
fn escape_into(s: &str, mut put: impl FnMut(&str)) {
    let mut rest = s;
    loop {
        let n = plain_len(rest.as_bytes());
        // An escaped byte is ASCII, so `n` and `n + 1` are character boundaries.
        let (plain, tail) = rest.split_at_checked(n).unwrap_or((rest, ""));
        put(plain);
        let Some(&b) = tail.as_bytes().first() else {
            break;
        };
        put(escape(b));
        rest = tail.get(1..).unwrap_or("");
    }
}

/// Append `s` as a JSON string literal (quotes included) to `out`.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(s, |piece| out.extend_from_slice(piece.as_bytes()));
    out.push(b'"');
}

/// [`push_str`] for a `String`.
pub(crate) fn push_string(out: &mut String, s: &str) {
    out.push('"');
    escape_into(s, |piece| out.push_str(piece));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back one escaped control character (the forms `push_str` writes).
    fn serde_json_like_unescape(lit: &str) -> String {
        let inner = &lit[1..lit.len() - 1];
        match inner {
            "\\b" => "\u{8}".into(),
            "\\t" => "\t".into(),
            "\\n" => "\n".into(),
            "\\f" => "\u{c}".into(),
            "\\r" => "\r".into(),
            u => char::from(u8::from_str_radix(&u[2..], 16).unwrap()).to_string(),
        }
    }

    #[test]
    fn plain_len_finds_the_first_byte_to_escape_at_every_position() {
        for len in 0..40 {
            let plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(plain_len(&plain), len);
            for at in 0..len {
                for bad in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut s = plain.clone();
                    s[at] = bad;
                    assert_eq!(plain_len(&s), at, "{bad:#x} at {at} of {len}");
                }
            }
        }
        // Bytes at and above 0x20, UTF-8 included, are plain.
        let s = "é ~\u{7f}€ żółw 0123456789".as_bytes();
        assert_eq!(plain_len(s), s.len());
    }

    #[test]
    fn push_str_escapes_like_serde_json() {
        let mut out = Vec::new();
        let input = "a\"b\\c\nd\r\t\u{8}\u{c}\u{1}é\u{1f}";
        push_str(&mut out, input);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#""a\"b\\c\nd\r\t\b\f\u0001é\u001f""#);
        let mut string = String::new();
        push_string(&mut string, input);
        assert_eq!(string, text);
        for c in 0u8..0x20 {
            let mut one = Vec::new();
            push_str(&mut one, char::from(c).encode_utf8(&mut [0; 4]));
            let one = String::from_utf8(one).unwrap();
            let back: String = serde_json_like_unescape(&one);
            assert_eq!(back, char::from(c).to_string(), "{one}");
        }
    }
}
