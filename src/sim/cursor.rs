//! The `ListAttendees` `NextToken` the simulator hands out: a versioned cursor holding the
//! meeting it belongs to, the last attendee id already returned and the index of the page it
//! asks for, encoded as lower-case hex (URL-safe, so query encoding cannot change it).
//!
//! Attendees are listed in attendee-id order and a page starts *after* the cursor's id, so an
//! attendee deleted between two pages never makes the next page skip anyone. Decoding must
//! never panic on client input: every malformed token is a [`CursorError`] (a 400).

use uuid::Uuid;

const VERSION: u8 = 1;
/// version + meeting id + last attendee id + page index.
const LEN: usize = 1 + 16 + 16 + 4;

/// Where the next `ListAttendees` page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) meeting: Uuid,
    /// The last attendee id of the previous page; the next page starts after it.
    pub(crate) last: Uuid,
    /// 0-based index of the page this token asks for (1 for the first token handed out).
    pub(crate) page: u32,
}

/// Why a `next-token` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CursorError {
    #[error("NextToken is not a token this service issued")]
    Malformed,
    #[error("NextToken has an unsupported version")]
    UnknownVersion,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        let mut raw = [0u8; LEN];
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(self.meeting.as_bytes());
        raw[17..33].copy_from_slice(self.last.as_bytes());
        raw[33..37].copy_from_slice(&self.page.to_be_bytes());
        let mut out = String::with_capacity(LEN * 2);
        for b in raw {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }

    /// # Errors
    /// [`CursorError`] for anything that is not exactly a token [`Cursor::encode`] produced.
    pub(crate) fn decode(token: &str) -> Result<Self, CursorError> {
        let t = token.as_bytes();
        if t.len() != LEN * 2 {
            return Err(CursorError::Malformed);
        }
        let mut raw = [0u8; LEN];
        for (i, pair) in t.chunks_exact(2).enumerate() {
            raw[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        if raw[0] != VERSION {
            return Err(CursorError::UnknownVersion);
        }
        let uuid_at = |at: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&raw[at..at + 16]);
            Uuid::from_bytes(b)
        };
        let page = u32::from_be_bytes([raw[33], raw[34], raw[35], raw[36]]);
        if page == 0 {
            // Page 0 is the request without a token; no token of ours names it.
            return Err(CursorError::Malformed);
        }
        Ok(Self {
            meeting: uuid_at(1),
            last: uuid_at(17),
            page,
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Only lower-case digits: exactly what `encode` writes, so each cursor has one spelling.
fn nibble(c: u8) -> Result<u8, CursorError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(CursorError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cursor {
        Cursor {
            meeting: Uuid::from_u128(0x4f1c7a2e_0b3d_4c5e_9f60_7a8b9c0d1e2f),
            last: Uuid::from_u128(0xffff_0000_1111_2222_3333_4444_5555_6666),
            page: 7,
        }
    }

    #[test]
    fn a_cursor_survives_encode_and_decode() {
        let c = sample();
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        let max = Cursor {
            page: u32::MAX,
            ..c
        };
        assert_eq!(Cursor::decode(&max.encode()), Ok(max));
    }

    #[test]
    fn an_encoded_cursor_is_url_safe_lower_hex() {
        let t = sample().encode();
        assert_eq!(t.len(), 74);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{t}"
        );
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let good = sample().encode();
        let bad = [
            String::new(),
            "garbage".to_owned(),
            "zz".to_owned(),
            good[..72].to_owned(),
            format!("{good}00"),
            good.to_uppercase(),
            good.replacen('4', "g", 1),
            format!("é{}", &good[2..]),
        ];
        for b in &bad {
            assert!(Cursor::decode(b).is_err(), "{b:?} was accepted");
        }
    }

    #[test]
    fn another_version_is_refused() {
        let t = format!("02{}", &sample().encode()[2..]);
        assert_eq!(Cursor::decode(&t), Err(CursorError::UnknownVersion));
    }

    #[test]
    fn a_token_naming_page_zero_is_refused() {
        let t = Cursor {
            page: 0,
            ..sample()
        }
        .encode();
        assert_eq!(Cursor::decode(&t), Err(CursorError::Malformed));
    }
}
