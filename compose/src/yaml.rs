//! YAML parsed with bounds on what hostile text costs.
//!
//! The parser (`yaml_serde`, over a port of libyaml) has two costs that grow faster than the
//! text, so both are checked before the document is built:
//!
//! - **Deep flow collections.** libyaml's scanner walks its stack of flow levels at every
//!   token, so `[[[[…` 100,000 deep takes minutes before the deserializer's own limit (128
//!   levels) is reached. [`flow_depth_bound`] bounds the flow depth from the text in one pass;
//!   past [`MAX_FLOW_DEPTH`] the text is refused unparsed.
//! - **Aliases.** Each alias is expanded into a copy of its anchor's node: a 1 MiB string
//!   aliased 20,000 times is 20 GB ("billion laughs" with large scalars, which the parser's
//!   repetition limit does not catch). A first pass visits the expanded document without
//!   keeping anything and stops past [`MAX_EXPANDED`]; only then is the value built.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use yaml_serde::Value;

/// How deep `[…]` and `{…}` may nest in a file (the deserializer stops at 128 levels of any
/// kind anyway).
pub(crate) const MAX_FLOW_DEPTH: usize = 256;

/// How large a file's document may be once aliases are expanded: each node counts
/// [`NODE_COST`] plus the bytes of its text.
pub(crate) const MAX_EXPANDED: usize = 16 * 1024 * 1024;

/// What one node counts towards [`MAX_EXPANDED`], about what it takes in memory.
const NODE_COST: usize = 64;

/// Parses `text` into a value.
///
/// # Errors
/// The parser's error, or a bound exceeded.
pub(crate) fn parse(text: &str) -> Result<Value, String> {
    if flow_depth_bound(text) > MAX_FLOW_DEPTH {
        return Err(format!(
            "flow collections ([…], {{…}}) nest more than {MAX_FLOW_DEPTH} levels deep"
        ));
    }
    let budget = Cell::new(MAX_EXPANDED);
    let probe = Probe(&budget);
    probe
        .deserialize(yaml_serde::Deserializer::from_str(text))
        .map_err(|e| e.to_string())?;
    yaml_serde::from_str(text).map_err(|e| e.to_string())
}

/// What `value` counts towards the bounds here: [`NODE_COST`] a node plus its text.
pub(crate) fn size(value: &Value) -> usize {
    NODE_COST.saturating_add(match value {
        Value::String(s) => s.len(),
        Value::Sequence(items) => items.iter().map(size).fold(0, usize::saturating_add),
        Value::Mapping(map) => return mapping_size(map),
        Value::Tagged(t) => t.tag.to_string().len().saturating_add(size(&t.value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    })
}

/// [`size`] of a mapping.
pub(crate) fn mapping_size(map: &yaml_serde::Mapping) -> usize {
    map.iter()
        .map(|(k, v)| size(k).saturating_add(size(v)))
        .fold(NODE_COST, usize::saturating_add)
}

/// Visits a document without keeping it, counting its expanded size against a budget.
struct Probe<'a>(&'a Cell<usize>);

impl Probe<'_> {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let cost = NODE_COST.saturating_add(bytes);
        match self.0.get().checked_sub(cost) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "the document is larger than {} MiB with its aliases expanded",
                MAX_EXPANDED / (1024 * 1024)
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.charge(s.len())
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<(), E> {
        self.charge(b.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while seq.next_element_seed(Probe(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while map.next_key_seed(Probe(self.0))?.is_some() {
            map.next_value_seed(Probe(self.0))?;
        }
        Ok(())
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!reset …`): the tag, then the node.
        use serde::de::VariantAccess;
        self.charge(0)?;
        let ((), contents) = data.variant_seed(Probe(self.0))?;
        contents.newtype_variant_seed(Probe(self.0))
    }
}

/// Where the scan of [`flow_depth_bound`] may be, as libyaml's scanner would see the text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between tokens in a flow collection.
    Token,
    /// In a plain scalar (or an anchor, alias or tag) in a flow collection.
    Plain,
    /// In a plain scalar, after white space.
    PlainSpace,
    /// In a single-quoted scalar.
    Single,
    /// Right after a `'` in a single-quoted scalar: the end, unless another `'` follows.
    SingleEnd,
    /// In a double-quoted scalar.
    Double,
    /// Right after a `\` in a double-quoted scalar.
    Escape,
    /// In a comment in a flow collection.
    Comment,
}

const MODES: [Mode; 8] = [
    Mode::Token,
    Mode::Plain,
    Mode::PlainSpace,
    Mode::Single,
    Mode::SingleEnd,
    Mode::Double,
    Mode::Escape,
    Mode::Comment,
];

/// The deepest level each mode may be at (indexed as [`MODES`]); `None`: not possible.
type Readings = [Option<usize>; 8];

/// An upper bound of how deep flow collections nest in `text`, in one pass.
///
/// The scan follows every reading libyaml could take where this simple model is unsure (is
/// this `'` a quote or part of a plain scalar? does this `[` in block context open a flow
/// sequence?), keeping for each mode the deepest level any reading reached, so quotes and
/// comments cannot hide closing brackets from it: the real depth is never above the bound.
/// Outside flow collections (block context, always possible at depth 0) the text is not
/// interpreted at all: every `[` and `{` may open one.
pub(crate) fn flow_depth_bound(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut now: Readings = [None; 8];
    let mut max = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // NEL (C2 85), LS (E2 80 A8) and PS (E2 80 A9) are line breaks to libyaml too; each is
        // taken as one unit.
        let width = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (0xC2, Some(0x85), _) => 2,
            (0xE2, Some(0x80), Some(0xA8 | 0xA9)) => 3,
            _ => 1,
        };
        let unit = Unit {
            byte: b,
            is_break: b == b'\n' || b == b'\r' || width > 1,
            is_blank: b == b' ' || b == b'\t',
        };
        // A byte order mark: libyaml skips one at the start of a line between tokens, and
        // takes it as a character elsewhere. Both readings are followed.
        let bom = b == 0xEF && bytes.get(i + 1) == Some(&0xBB) && bytes.get(i + 2) == Some(&0xBF);
        let mut new: Readings = [None; 8];
        if b == b'[' || b == b'{' {
            put(&mut new, Mode::Token, 1);
        }
        for mode in MODES {
            if let Some(depth) = now[mode as usize] {
                step(mode, depth, unit, &mut new);
                if bom {
                    let blank = Unit {
                        is_blank: true,
                        ..unit
                    };
                    step(mode, depth, blank, &mut new);
                }
            }
        }
        for d in new.iter().flatten() {
            max = max.max(*d);
        }
        if max > MAX_FLOW_DEPTH {
            return max;
        }
        now = new;
        i += if bom { 3 } else { width };
    }
    max
}

/// One character (or one multi-byte line break) of the text.
#[derive(Clone, Copy)]
struct Unit {
    byte: u8,
    is_break: bool,
    is_blank: bool,
}

impl Unit {
    fn is_space(self) -> bool {
        self.is_break || self.is_blank
    }
}

fn put(readings: &mut Readings, mode: Mode, depth: usize) {
    let slot = &mut readings[mode as usize];
    *slot = Some(slot.map_or(depth, |d| d.max(depth)));
}

/// The readings that `mode` at `depth` leads to after `unit`.
fn step(mode: Mode, depth: usize, unit: Unit, new: &mut Readings) {
    let b = unit.byte;
    // A flow indicator, between tokens or ending a plain scalar.
    let indicator = |new: &mut Readings| match b {
        b'[' | b'{' => {
            put(new, Mode::Token, depth + 1);
            true
        }
        b']' | b'}' => {
            // At 1, back to block context, which is always possible.
            if depth > 1 {
                put(new, Mode::Token, depth - 1);
            }
            true
        }
        b',' => {
            put(new, Mode::Token, depth);
            true
        }
        _ => false,
    };
    match mode {
        Mode::Token => {
            if unit.is_space() {
                put(new, Mode::Token, depth);
            } else if indicator(new) {
            } else if b == b'#' {
                put(new, Mode::Comment, depth);
            } else if b == b'\'' {
                put(new, Mode::Single, depth);
            } else if b == b'"' {
                put(new, Mode::Double, depth);
            } else {
                // `:`, `?` and `-` may be indicators (still between tokens) or start a plain
                // scalar; anchors, aliases and tags are read as plain scalars.
                if matches!(b, b':' | b'?' | b'-') {
                    put(new, Mode::Token, depth);
                }
                put(new, Mode::Plain, depth);
            }
        }
        Mode::Plain | Mode::PlainSpace => {
            if indicator(new) {
            } else if unit.is_space() {
                put(new, Mode::PlainSpace, depth);
            } else if mode == Mode::PlainSpace && b == b'#' {
                put(new, Mode::Comment, depth);
            } else {
                if mode == Mode::PlainSpace {
                    // After an anchor, alias or tag and a space, a quote opens a scalar; after
                    // a word it is a character of the plain scalar.
                    match b {
                        b'\'' => put(new, Mode::Single, depth),
                        b'"' => put(new, Mode::Double, depth),
                        _ => {}
                    }
                }
                if b == b':' {
                    put(new, Mode::Token, depth);
                }
                put(new, Mode::Plain, depth);
            }
        }
        Mode::Single => {
            if b == b'\'' {
                put(new, Mode::SingleEnd, depth);
            } else {
                put(new, Mode::Single, depth);
            }
        }
        Mode::SingleEnd => {
            if b == b'\'' {
                // `''`: a quote inside.
                put(new, Mode::Single, depth);
            } else {
                step(Mode::Token, depth, unit, new);
            }
        }
        Mode::Double => match b {
            b'\\' => put(new, Mode::Escape, depth),
            b'"' => put(new, Mode::Token, depth),
            _ => put(new, Mode::Double, depth),
        },
        Mode::Escape => put(new, Mode::Double, depth),
        Mode::Comment => {
            if unit.is_break {
                put(new, Mode::Token, depth);
            } else {
                put(new, Mode::Comment, depth);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_never_below_the_real_depth() {
        for (text, depth) in [
            ("a: b", 0),
            ("a: [1, 2, {b: [3]}]", 3),
            ("a: [\"]]]\", [[x]]]", 3),
            ("a: ['it''s ]]', [[x]]]", 3),
            ("a: [x # ]]]\n , [[y]]]", 3),
            ("a: [&a 'x]]]', [[y]]]", 3),
            ("a: [!t \"x]]]\", [[y]]]", 3),
            ("a: [x\u{85}'y]]]', [[z]]]", 3),
            ("a: [x,\n\u{feff}'y]]]', [[z]]]", 3),
            ("a: [x\u{feff}#y, [[z]]]", 3),
            ("a: [{k: 'v]]'}, [[z]]]", 3),
            ("a: it's [not flow\nb: [x]", 2),
        ] {
            let bound = flow_depth_bound(text);
            assert!(bound >= depth, "{text:?}: {bound} < {depth}");
        }
        // Ordinary files are close to their real depth.
        assert_eq!(
            flow_depth_bound("a: [1, [2, [3]], {x: y}]\nb: ['q]', \"r]\"]"),
            3
        );
    }

    #[test]
    fn deep_flow_collections_are_refused_before_parsing() {
        for text in [
            format!("services: {}", "[".repeat(100_000)),
            format!("services: {}", "{a: ".repeat(100_000)),
            // Closing brackets hidden in quoted scalars and comments do not lower the bound.
            format!("services: {}", "[ \"]\", ".repeat(100_000)),
            format!("services: {}", "[ ']', ".repeat(100_000)),
            format!("services: {}", "[ # ]\n".repeat(100_000)),
        ] {
            let start = std::time::Instant::now();
            let err = parse(&text).expect_err("refused");
            assert!(err.contains("nest more than"), "{err}");
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let big = "x".repeat(1 << 20);
        let text = format!(
            "x-s: &s \"{big}\"\nx-l: [{}]\n",
            vec!["*s"; 20_000].join(",")
        );
        let start = std::time::Instant::now();
        let err = parse(&text).expect_err("refused");
        assert!(err.contains("aliases expanded"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        // A few aliases are fine.
        let ok = parse("x: &a {k: v}\ny: *a\nz: [*a, *a]\n").expect("parses");
        assert_eq!(ok["z"][1]["k"], Value::from("v"));
    }

    /// How deep `value`'s flow collections nest (a scalar is 0). A single-pair mapping in a
    /// sequence may be an implicit one (`[a: b]`), which opens no flow level: not counted.
    fn depth(value: &Value, in_sequence: bool) -> usize {
        match value {
            Value::Sequence(items) => 1 + items.iter().map(|v| depth(v, true)).max().unwrap_or(0),
            Value::Mapping(map) => {
                let own = usize::from(!(in_sequence && map.len() == 1));
                own + map
                    .iter()
                    .map(|(k, v)| depth(k, false).max(depth(v, false)))
                    .max()
                    .unwrap_or(0)
            }
            Value::Tagged(t) => depth(&t.value, in_sequence),
            _ => 0,
        }
    }

    #[test]
    fn random_flow_documents_never_nest_deeper_than_the_bound() {
        // A document that starts with `[` is all flow: its nesting is its flow depth.
        let pieces = [
            "[", "]", "{", "}", ",", "'", "''", "\"", "\\", "#", " ", "\n", ":", ": ", "a", "-",
            "&a ", "*a", "!t ", "? ", "\u{feff}", "\u{85}", "\t",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // 50,000 documents here (a few seconds in a debug build); FLOW_DOCUMENTS=3000000 for
        // the longer run the bound was checked with.
        let rounds: usize = std::env::var("FLOW_DOCUMENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(50_000);
        let mut parsed = 0;
        for _ in 0..rounds {
            let len = 1 + (next() % 16) as usize;
            let mut text = String::from("[");
            for _ in 0..len {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            // A top-level sequence (not, say, `[a]: b`, a block mapping with a flow key).
            if let Ok(value @ Value::Sequence(_)) = yaml_serde::from_str::<Value>(&text) {
                parsed += 1;
                let bound = flow_depth_bound(&text);
                let real = depth(&value, false);
                assert!(real <= bound, "{text:?}: {real} > {bound}");
            }
        }
        assert!(parsed > rounds / 200, "only {parsed} of {rounds} parsed");
    }
}
