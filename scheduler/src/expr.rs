//! The `memberOf` expression language, after Amazon ECS's cluster query language:
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | test
//! test    := "attribute:" NAME ( ("==" | "!=" | "=~" | "!~") VALUE
//!                              | ("in" | "not in") "[" VALUE ("," VALUE)* "]"
//!                              | "exists" )
//! ```
//!
//! `NAME` and `VALUE` are runs of letters, digits and `._-/:*` (or a quoted string for
//! `VALUE`); `=~` matches a whole value against a regular expression. A node without the
//! attribute fails every test except `!=`, `not in` and `not … exists`. `not` and parentheses
//! nest at most [`MAX_DEPTH`] levels.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Not.
    Not(Box<Expr>),
    /// `attribute:NAME OP …`.
    Test {
        /// Attribute name.
        name: String,
        /// What is checked.
        op: Op,
    },
}

/// A test on one attribute.
#[derive(Debug, Clone)]
pub enum Op {
    /// `== v`.
    Eq(String),
    /// `!= v`.
    Ne(String),
    /// `in [a, b]`.
    In(Vec<String>),
    /// `not in [a, b]`.
    NotIn(Vec<String>),
    /// `=~ re` (anchored).
    Matches(regex::Regex),
    /// `!~ re` (anchored).
    NotMatches(regex::Regex),
    /// `exists`.
    Exists,
}

/// Why an expression does not parse: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub at: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.at, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Sym(&'static str),
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/:*".contains(c)
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..].iter().take(2).map(|(_, c)| *c).collect();
        if let Some(sym) = ["==", "!=", "=~", "!~"].into_iter().find(|s| *s == two) {
            out.push((at, Tok::Sym(sym)));
            i += 2;
            continue;
        }
        if let Some(sym) = ["(", ")", "[", "]", ","]
            .into_iter()
            .find(|s| s.starts_with(c))
        {
            out.push((at, Tok::Sym(sym)));
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            at,
                            message: "unterminated quoted value".into(),
                        })
                    }
                    Some((_, q)) if *q == c => break,
                    Some((_, ch)) => s.push(*ch),
                }
                i += 1;
            }
            i += 1;
            out.push((at, Tok::Quoted(s)));
            continue;
        }
        if word_char(c) {
            let mut s = String::new();
            while let Some((_, ch)) = chars.get(i).filter(|(_, ch)| word_char(*ch)) {
                s.push(*ch);
                i += 1;
            }
            out.push((at, Tok::Word(s)));
            continue;
        }
        return Err(ParseError {
            at,
            message: format!("unexpected '{c}'"),
        });
    }
    Ok(out)
}

/// Deepest nesting of `not` and parentheses: the parser recurses once per level, and an
/// expression comes from a request body.
pub const MAX_DEPTH: usize = 64;

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(a, _)| *a)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.at(),
            message: message.into(),
        })
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &'static str) -> bool {
        if self.peek() == Some(&Tok::Sym(s)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let not = matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not"));
        let open = self.peek() == Some(&Tok::Sym("("));
        if !not && !open {
            return self.test();
        }
        if self.depth == MAX_DEPTH {
            return self.err(format!(
                "'not' and '(' nested deeper than {MAX_DEPTH} levels"
            ));
        }
        self.pos += 1;
        self.depth += 1;
        let e = if not {
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.or().and_then(|e| {
                if self.sym(")") {
                    Ok(e)
                } else {
                    self.err("expected ')'")
                }
            })
        };
        self.depth -= 1;
        e
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => {
                self.pos += 1;
                Ok(w)
            }
            _ => self.err("expected a value"),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, ParseError> {
        if !self.sym("[") {
            return self.err("expected '[' to start a list of values");
        }
        let mut out = vec![self.value()?];
        while self.sym(",") {
            out.push(self.value()?);
        }
        if !self.sym("]") {
            return self.err("expected ',' or ']'");
        }
        Ok(out)
    }

    fn regex(&mut self) -> Result<regex::Regex, ParseError> {
        let at = self.at();
        let pattern = self.value()?;
        regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ParseError {
            at,
            message: format!("bad regular expression '{pattern}': {e}"),
        })
    }

    fn test(&mut self) -> Result<Expr, ParseError> {
        let name = match self.peek().cloned() {
            Some(Tok::Word(w)) => match w.strip_prefix("attribute:") {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => return self.err(format!("expected attribute:NAME, found '{w}'")),
            },
            _ => return self.err("expected attribute:NAME, 'not' or '('"),
        };
        self.pos += 1;
        let op = match self.peek().cloned() {
            Some(Tok::Sym("==")) => {
                self.pos += 1;
                Op::Eq(self.value()?)
            }
            Some(Tok::Sym("!=")) => {
                self.pos += 1;
                Op::Ne(self.value()?)
            }
            Some(Tok::Sym("=~")) => {
                self.pos += 1;
                Op::Matches(self.regex()?)
            }
            Some(Tok::Sym("!~")) => {
                self.pos += 1;
                Op::NotMatches(self.regex()?)
            }
            _ if self.keyword("in") => Op::In(self.list()?),
            _ if self.keyword("exists") => Op::Exists,
            _ if self.keyword("not") => {
                if !self.keyword("in") {
                    return self.err("expected 'in' after 'not'");
                }
                Op::NotIn(self.list()?)
            }
            _ => return self.err("expected ==, !=, =~, !~, in, not in or exists"),
        };
        Ok(Expr::Test { name, op })
    }
}

/// Parses an expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        end: text.len(),
        depth: 0,
    };
    if p.toks.is_empty() {
        return p.err("empty expression");
    }
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return p.err("expected 'and', 'or' or the end");
    }
    Ok(e)
}

impl Expr {
    /// Whether a node with these attributes satisfies the expression.
    pub fn eval(&self, attrs: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::And(a, b) => a.eval(attrs) && b.eval(attrs),
            Expr::Or(a, b) => a.eval(attrs) || b.eval(attrs),
            Expr::Not(e) => !e.eval(attrs),
            Expr::Test { name, op } => {
                let v = attrs.get(name);
                match op {
                    Op::Eq(x) => v == Some(x),
                    Op::Ne(x) => v != Some(x),
                    Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
                    Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                    Op::Matches(re) => v.is_some_and(|v| re.is_match(v)),
                    Op::NotMatches(re) => v.is_none_or(|v| !re.is_match(v)),
                    Op::Exists => v.is_some(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_against_a_table_of_nodes() {
        let shop = attrs(&[("site", "store-12"), ("arch", "arm64"), ("zone", "eu-west")]);
        let lab = attrs(&[("site", "lab"), ("arch", "amd64")]);
        let bare = attrs(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("attribute:site == store-12", [true, false, false]),
            ("attribute:site != store-12", [false, true, true]),
            ("attribute:arch in [arm64, amd64]", [true, true, false]),
            ("attribute:arch not in [arm64]", [false, true, true]),
            ("attribute:zone =~ eu-.*", [true, false, false]),
            ("attribute:zone =~ eu", [false, false, false]),
            ("attribute:zone !~ us-.*", [true, true, true]),
            ("attribute:zone exists", [true, false, false]),
            ("not attribute:zone exists", [false, true, true]),
            (
                "attribute:site == lab or attribute:arch == arm64 and attribute:zone exists",
                [true, true, false],
            ),
            (
                "(attribute:site == lab or attribute:arch == arm64) and not attribute:zone exists",
                [false, true, false],
            ),
            ("attribute:site == \"store-12\"", [true, false, false]),
            ("ATTRIBUTE:site == lab", [false, false, false]),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(e) => {
                    let got = [e.eval(&shop), e.eval(&lab), e.eval(&bare)];
                    assert_eq!(&got, want, "{text}");
                }
                Err(e) if text.starts_with("ATTRIBUTE") => {
                    assert!(e.message.contains("attribute:NAME"), "{e}");
                }
                Err(e) => panic!("{text}: {e}"),
            }
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        for (text, at, what) in [
            ("", 0, "empty"),
            ("attribute:site", 14, "expected =="),
            ("attribute:site == ", 18, "expected a value"),
            ("attribute:a in [x, y", 20, "expected ',' or ']'"),
            ("attribute:a == x and", 20, "expected attribute:NAME"),
            ("(attribute:a == x", 17, "expected ')'"),
            ("attribute:a =~ \"(\"", 15, "bad regular expression"),
            ("attribute:a == x y", 17, "expected 'and', 'or'"),
            ("site == x", 0, "expected attribute:NAME, found 'site'"),
            ("attribute:a == 'x", 15, "unterminated"),
            ("attribute:a == x & y", 17, "unexpected '&'"),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.message.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded_not_the_stack() {
        let test = "attribute:a exists";
        let nested = |n: usize| format!("{}{test}{}", "(not ".repeat(n), ")".repeat(n));
        let e = parse(&nested(MAX_DEPTH / 2)).expect("at the limit");
        assert!(e.eval(&attrs(&[("a", "x")])), "an even number of 'not's");
        for text in [
            nested(MAX_DEPTH / 2 + 1),
            "(".repeat(100_000),
            format!("{}{test}", "not ".repeat(100_000)),
        ] {
            let e = parse(&text).expect_err("too deep");
            assert!(e.message.contains("nested deeper than 64"), "{e}");
        }
    }
}
