//! What a legacy row must be, wherever it comes from (a local write, a pull, a
//! push on the central): JSON text that is an object, with a string `ID` equal to
//! its record id, no key twice at any level, nested no deeper and no larger than
//! the wire can carry.
//!
//! Why each rule: SQLite's JSON functions read the *first* of two equal keys and
//! serde reads the *last*, so a row with `store_ID` twice is judged as one store
//! locally and pushed as another (issue 18); a lone surrogate escape or a depth of
//! thousands is accepted by some parsers and refused by others, which turns one bad
//! row into a central that answers 400 for a whole batch. One check, used by every
//! reader, keeps all sides agreeing on what a row says.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest row, serialised. Defaults to 1 MiB: legacy rows are a few hundred bytes;
/// anything near this is a broken export.
pub const MAX_ROW_BYTES: usize = 1 << 20;
/// Deepest nesting of objects and arrays. Defaults to 64: Open mSupply documents
/// nest forms a dozen levels; serde_json stops at 128.
pub const MAX_DEPTH: usize = 64;

/// Why a row is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    TooLarge(usize),
    /// Not JSON at all (including invalid escapes such as a lone surrogate).
    NotJson(String),
    NotObject,
    NoId,
    IdNotString,
    IdMismatch {
        id: String,
        expected: String,
    },
    DuplicateKey(String),
    TooDeep,
}

impl Problem {
    /// The reason code, the same on both sides: what the central answers in a
    /// 400 `invalid_sync_record` (protocol §4, and this project's `too_large`,
    /// `too_deep`, `duplicate_key`) and what the agent shows for a row it set
    /// aside. The Display text says more.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::TooLarge(_) => "too_large",
            Problem::NotJson(_) | Problem::NotObject | Problem::IdNotString => "bad_type",
            Problem::NoId => "missing_key",
            Problem::IdMismatch { .. } => "id_mismatch",
            Problem::DuplicateKey(_) => "duplicate_key",
            Problem::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TooLarge(n) => {
                write!(f, "{n} bytes, over the {MAX_ROW_BYTES}-byte record limit")
            }
            Problem::NotJson(e) => write!(f, "not valid JSON ({e})"),
            Problem::NotObject => f.write_str("must be a JSON object"),
            Problem::NoId => f.write_str("has no \"ID\" field"),
            Problem::IdNotString => f.write_str("\"ID\" must be a non-empty string"),
            Problem::IdMismatch { id, expected } => {
                write!(f, "\"ID\" is {id:?} but the record id is {expected:?}")
            }
            Problem::DuplicateKey(k) => write!(f, "has the key {k:?} twice"),
            Problem::TooDeep => write!(f, "is nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

/// Checks `text` as a row; `expected_id`, when given, must equal its `ID`.
/// Returns the row's `ID`.
pub fn check(text: &str, expected_id: Option<&str>) -> Result<String, Problem> {
    if text.len() > MAX_ROW_BYTES {
        return Err(Problem::TooLarge(text.len()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let mut state = State::default();
    let outcome = Top { state: &mut state }.deserialize(&mut de);
    match outcome {
        Ok(()) => {}
        Err(e) => {
            return Err(state
                .problem
                .take()
                .unwrap_or_else(|| Problem::NotJson(e.to_string())))
        }
    }
    de.end().map_err(|e| Problem::NotJson(e.to_string()))?;
    let id = match state.id {
        IdSeen::None => return Err(Problem::NoId),
        IdSeen::NotString => return Err(Problem::IdNotString),
        IdSeen::Str(id) => id,
    };
    if let Some(expected) = expected_id {
        if id != expected {
            return Err(Problem::IdMismatch {
                id,
                expected: expected.to_string(),
            });
        }
    }
    Ok(id)
}

#[derive(Default)]
enum IdSeen {
    #[default]
    None,
    NotString,
    Str(String),
}

#[derive(Default)]
struct State {
    id: IdSeen,
    problem: Option<Problem>,
}

impl State {
    fn fail<E: de::Error>(&mut self, p: Problem) -> E {
        let msg = p.to_string();
        self.problem = Some(p);
        E::custom(msg)
    }
}

/// The keys of one object seen so far, borrowed from the row's text where
/// they have no escapes. Legacy rows have a few dozen keys: a short list of
/// hashes is searched without allocating a string per key (every row of every
/// push and pull passes here; issue 31), and a set takes over for a large
/// object, so a hostile one with many keys costs linear time.
#[derive(Default)]
struct Keys<'de> {
    few: Vec<(u64, Cow<'de, str>)>,
    many: Option<HashSet<Cow<'de, str>>>,
}

/// Keys searched in the list at most before the set takes over.
const FEW_KEYS: usize = 64;

impl<'de> Keys<'de> {
    /// Adds `k`; false when it was there already.
    fn insert(&mut self, k: Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        let h = Self::hash(&k);
        if self.few.iter().any(|(fh, fk)| *fh == h && *fk == k) {
            return false;
        }
        if self.few.len() == FEW_KEYS {
            let mut set: HashSet<Cow<'de, str>> = self.few.drain(..).map(|(_, k)| k).collect();
            set.insert(k);
            self.many = Some(set);
            return true;
        }
        self.few.push((h, k));
        true
    }

    /// FNV-1a: a cheap filter before the string compare.
    fn hash(k: &str) -> u64 {
        k.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// The top level: must be an object; its `ID` is remembered.
struct Top<'s> {
    state: &'s mut State,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::default();
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if !keys.insert(k.clone()) {
                return Err(self.state.fail(Problem::DuplicateKey(k.into_owned())));
            }
            if k == "ID" {
                let v: IdValue = map.next_value()?;
                self.state.id = match v.0 {
                    Some(s) if !s.is_empty() => IdSeen::Str(s),
                    _ => IdSeen::NotString,
                };
            } else {
                map.next_value_seed(Nested {
                    state: &mut *self.state,
                    depth: 1,
                })?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.state.fail(Problem::NotObject))
    }
}

/// `ID`'s value: a string, or anything else (remembered as "not a string").
struct IdValue(Option<String>);

impl<'de> de::Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IdValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ID")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<IdValue, E> {
                Ok(IdValue(Some(s.to_string())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<IdValue, A::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(IdValue(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<IdValue, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(IdValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Any value below the top, with the depth it sits at.
struct Nested<'s> {
    state: &'s mut State,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.state.fail(Problem::TooDeep));
        }
        let mut keys = Keys::default();
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if !keys.insert(k.clone()) {
                return Err(self.state.fail(Problem::DuplicateKey(k.into_owned())));
            }
            map.next_value_seed(Nested {
                state: &mut *self.state,
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.state.fail(Problem::TooDeep));
        }
        while seq
            .next_element_seed(Nested {
                state: &mut *self.state,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_pass_and_give_their_id() {
        assert_eq!(
            check(r#"{"ID":"T1","store_ID":"S"}"#, Some("T1")).unwrap(),
            "T1"
        );
        let nested = r#"{"ID":"D","data":{"a":[1,{"b":null}],"c":5.0,"d":"ü\u00e9"}}"#;
        assert_eq!(check(nested, None).unwrap(), "D");
    }

    #[test]
    fn a_key_twice_is_found_however_many_keys_and_however_written() {
        for n in [3, 63, 64, 65, 200] {
            let mut keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let good = format!("{{\"ID\":\"A\",{}}}", keys.join(","));
            assert_eq!(check(&good, Some("A")).unwrap(), "A", "{n} keys");
            keys.push(format!("\"k{}\":0", n / 2));
            let bad = format!("{{\"ID\":\"A\",{}}}", keys.join(","));
            assert_eq!(
                check(&bad, None),
                Err(Problem::DuplicateKey(format!("k{}", n / 2))),
                "{n} keys"
            );
        }
        // An escaped key is the same key.
        assert_eq!(
            check(r#"{"ID":"A","store_ID":"S","store_\u0049D":"X"}"#, None),
            Err(Problem::DuplicateKey("store_ID".into()))
        );
        assert_eq!(
            check(r#"{"ID":"A","\u0049D":"B"}"#, None),
            Err(Problem::DuplicateKey("ID".into()))
        );
    }

    #[test]
    fn every_problem_is_named() {
        let cases: &[(&str, Problem)] = &[
            (
                r#"{"ID":"T","store_ID":"S","store_ID":"X"}"#,
                Problem::DuplicateKey("store_ID".into()),
            ),
            (
                r#"{"ID":"T","a":{"k":1,"k":2}}"#,
                Problem::DuplicateKey("k".into()),
            ),
            (r#"{"store_ID":"S"}"#, Problem::NoId),
            (r#"{"ID":null}"#, Problem::IdNotString),
            (r#"{"ID":""}"#, Problem::IdNotString),
            (r#"{"ID":7}"#, Problem::IdNotString),
            (r#"[1]"#, Problem::NotObject),
            (r#""x""#, Problem::NotObject),
        ];
        for (text, want) in cases {
            assert_eq!(&check(text, None).unwrap_err(), want, "{text}");
        }
        assert!(matches!(
            check(r#"{"ID":"T","n":"\ud83d"}"#, None),
            Err(Problem::NotJson(_))
        ));
        assert!(matches!(
            check("{\"ID\":\"T\"} x", None),
            Err(Problem::NotJson(_))
        ));
        assert_eq!(
            check(r#"{"ID":"A"}"#, Some("B")).unwrap_err().code(),
            "id_mismatch"
        );
        let deep = format!(
            r#"{{"ID":"T","d":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(check(&deep, None).unwrap_err(), Problem::TooDeep);
        let big = format!(r#"{{"ID":"T","d":"{}"}}"#, "x".repeat(MAX_ROW_BYTES));
        assert!(matches!(check(&big, None), Err(Problem::TooLarge(_))));
    }
}
