//! The `ListAttendees` `NextToken` the simulator hands out: a versioned cursor holding the
//! meeting it belongs to, where the next page starts and the index of the page it asks for,
//! encoded as lower-case hex (URL-safe, so query encoding cannot change it).
//!
//! Where the next page starts depends on the paging the simulator runs with
//! ([`super::Paging`]): after the last attendee id already returned (keyset, version 1), or
//! at a position in the live attendee list (offset, version 2). Attendees are listed in
//! attendee-id order, so with a keyset cursor an attendee deleted between two pages never
//! makes the next page skip anyone; with an offset cursor it shifts the list and the next
//! page skips one live attendee per deletion, as a service with offset tokens would.
//!
//! Decoding must never panic on client input: every malformed token is a [`CursorError`]
//! (a 400).

use uuid::Uuid;

/// A keyset cursor: version + meeting id + last attendee id + page index.
const KEYSET: u8 = 1;
const KEYSET_LEN: usize = 1 + 16 + 16 + 4;
/// An offset cursor: version + meeting id + position + page index.
const OFFSET: u8 = 2;
const OFFSET_LEN: usize = 1 + 16 + 4 + 4;

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// After this attendee id (the last one of the previous page).
    After(Uuid),
    /// At this 0-based index of the meeting's live attendees, in attendee-id order.
    Index(u32),
}

/// Where the next `ListAttendees` page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) meeting: Uuid,
    pub(crate) position: Position,
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
        let mut raw = Vec::with_capacity(KEYSET_LEN);
        match self.position {
            Position::After(last) => {
                raw.push(KEYSET);
                raw.extend_from_slice(self.meeting.as_bytes());
                raw.extend_from_slice(last.as_bytes());
            }
            Position::Index(at) => {
                raw.push(OFFSET);
                raw.extend_from_slice(self.meeting.as_bytes());
                raw.extend_from_slice(&at.to_be_bytes());
            }
        }
        raw.extend_from_slice(&self.page.to_be_bytes());
        let mut out = String::with_capacity(raw.len() * 2);
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
        if !t.len().is_multiple_of(2) || t.len() > KEYSET_LEN * 2 {
            return Err(CursorError::Malformed);
        }
        let raw = t
            .chunks_exact(2)
            .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
            .collect::<Result<Vec<u8>, CursorError>>()?;
        let expected_len = match raw.first() {
            Some(&KEYSET) => KEYSET_LEN,
            Some(&OFFSET) => OFFSET_LEN,
            Some(_) => return Err(CursorError::UnknownVersion),
            None => return Err(CursorError::Malformed),
        };
        if raw.len() != expected_len {
            return Err(CursorError::Malformed);
        }
        let uuid_at = |at: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&raw[at..at + 16]);
            Uuid::from_bytes(b)
        };
        let u32_at =
            |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let position = if raw[0] == KEYSET {
            Position::After(uuid_at(17))
        } else {
            Position::Index(u32_at(17))
        };
        let page = u32_at(raw.len() - 4);
        if page == 0 {
            // Page 0 is the request without a token; no token of ours names it.
            return Err(CursorError::Malformed);
        }
        Ok(Self {
            meeting: uuid_at(1),
            position,
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
            position: Position::After(Uuid::from_u128(0xffff_0000_1111_2222_3333_4444_5555_6666)),
            page: 7,
        }
    }

    fn offset_sample() -> Cursor {
        Cursor {
            position: Position::Index(35),
            ..sample()
        }
    }

    #[test]
    fn a_cursor_survives_encode_and_decode() {
        for c in [sample(), offset_sample()] {
            assert_eq!(Cursor::decode(&c.encode()), Ok(c));
            let max = Cursor {
                page: u32::MAX,
                ..c
            };
            assert_eq!(Cursor::decode(&max.encode()), Ok(max));
        }
    }

    #[test]
    fn an_encoded_cursor_is_url_safe_lower_hex() {
        let t = sample().encode();
        assert_eq!(t.len(), 74);
        assert_eq!(offset_sample().encode().len(), 50);
        for t in [t, offset_sample().encode()] {
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{t}"
            );
        }
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let good = sample().encode();
        let offset = offset_sample().encode();
        let bad = [
            String::new(),
            "garbage".to_owned(),
            "zz".to_owned(),
            "01".to_owned(),
            good[..72].to_owned(),
            format!("{good}00"),
            good.to_uppercase(),
            good.replacen('4', "g", 1),
            format!("é{}", &good[2..]),
            offset[..48].to_owned(),
            format!("{offset}00"),
            // A keyset body under the offset version, and the other way round.
            format!("02{}", &good[2..]),
            format!("01{}", &offset[2..]),
        ];
        for b in &bad {
            assert!(Cursor::decode(b).is_err(), "{b:?} was accepted");
        }
    }

    #[test]
    fn another_version_is_refused() {
        let t = format!("03{}", &sample().encode()[2..]);
        assert_eq!(Cursor::decode(&t), Err(CursorError::UnknownVersion));
    }

    #[test]
    fn a_token_naming_page_zero_is_refused() {
        for c in [sample(), offset_sample()] {
            let t = Cursor { page: 0, ..c }.encode();
            assert_eq!(Cursor::decode(&t), Err(CursorError::Malformed));
        }
    }
}
