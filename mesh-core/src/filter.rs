//! Consul's `?filter=` expressions (HashiCorp go-bexpr), parsed once and
//! evaluated against JSON rows: the objects a listing endpoint returns,
//! such as a `/v1/health/service` entry
//! `{"Node":{"Node":"n1","Meta":{"env":"prod"}},"Service":{"Tags":["v1"],"Port":8181},"Checks":[..]}`
//! or a flat `/v1/catalog/service` entry
//! `{"ServiceName":"web","ServiceTags":["a"],"NodeMeta":{..}}`.
//! Pure and deterministic: no IO, no clocks, no hash-map iteration.
//!
//! # The language
//!
//! A filter is match expressions joined by `and`, `or`, `not` and
//! parentheses. `not` binds tightest, then `and`, then `or`:
//! `a and not b or c` is `(a and (not b)) or c`.
//!
//! | Form | True when |
//! |------|-----------|
//! | `Sel == V`, `Sel != V` | the value at `Sel` equals (does not equal) `V` |
//! | `Sel is empty`, `Sel is not empty` | the string, list or map at `Sel` is (is not) empty |
//! | `V in Sel`, `Sel contains V` | `V` is an element of the list, a key of the map, or a substring of the string at `Sel` |
//! | `V not in Sel`, `Sel not contains V` | the negation |
//! | `Sel matches V`, `Sel not matches V` | the string at `Sel` matches (does not match) the regular expression `V` (Go RE2 syntax, unanchored) |
//!
//! *Selectors* are dotted paths starting with an ASCII letter; each name is
//! `[A-Za-z][A-Za-z0-9_/]*`. A map key that is not such a name is written as
//! an index, `Meta["some key"]`; a list element as `.0` or `["0"]`. A
//! double-quoted string that starts with `/` in selector position is a JSON
//! pointer (`"/Service/Meta/some-key"`, `~1` for `/`, `~0` for `~`).
//!
//! *Values* are bare words (`passing`, `true`, `a.b`), numbers (`8181`,
//! `-1.5`), double-quoted strings with Go escapes (`"a\tb"`) or backtick raw
//! strings (`` `C:\path` ``).
//!
//! Comparison follows the type of the JSON value found: a string compares
//! as text; a number compares numerically with the literal read as a number
//! (`Service.Port == 8181`); a boolean compares with the literal read as Go's
//! `strconv.ParseBool` does (`true`, `false`, `1`, `0`, `t`, `f`, `TRUE`, ...);
//! elements of a list are compared the same way one by one (ones the literal
//! cannot be read as are skipped). A literal that cannot be read as the
//! field's type, or an operator that does not apply to it (`==` on a list,
//! `in` on a number, `matches` on a number), is an evaluation error, as in
//! Consul, which answers such a filter with HTTP 400.
//!
//! # Missing fields
//!
//! As in go-bexpr, a key missing from a *map* is an absent value: `==`,
//! `in`, `contains`, `matches` and `is not empty` are false, their negations
//! and `is empty` are true (so `Node.Meta.env != prod` keeps nodes without
//! an `env`). A field missing from a *struct* is an error naming the
//! selector. JSON does not say which objects were Go maps, so this module
//! decides: the row itself is a struct; a nested object is a map when its
//! field name ends in `Meta` or `TaggedAddresses` or is `Config` or `Header`,
//! when it is empty, or when any of its keys does not start with an ASCII
//! capital letter; otherwise it is a struct (Consul's field names are
//! capitalised). Rows must therefore carry all their fields, as Consul's JSON
//! does, or `is empty` on an omitted field becomes an error. A JSON `null`
//! behaves as an empty map, list or string.
//!
//! # Differences from go-bexpr
//!
//! * A selector that walks *through* a list by name (`Checks.Status` on a
//!   list of checks) matches when the expression holds for *any* element,
//!   including negated operators (`Checks.Status != passing` is "some check
//!   is not passing"). That is what Consul's documented selectors such as
//!   `Checks.Status` did in go-bexpr before 0.1.3; current go-bexpr rejects
//!   them. An empty list matches nothing.
//! * An index past the end of a list (`Checks.3.Status`) is an absent
//!   value, like a missing map key; go-bexpr reports an error.
//! * Numbers compare numerically whatever their spelling: an integer field
//!   also accepts `8181.0`, where go-bexpr would refuse a float literal.
//! * The regular expression of `matches` is compiled when the filter is
//!   parsed, so a bad one is an error even if no row is evaluated. The
//!   engine is this module's own linear-time matcher for a subset of RE2:
//!   Unicode classes (`\pL`, `\p{Greek}`), `\Q..\E` and `\C` are reported as
//!   [`FilterError::Unsupported`]; case folding is simple.
//! * Double-quoted strings may contain `\"` (go-bexpr ends the string at any
//!   `"`); raw newlines are allowed inside them.
//! * Whitespace around `in`, `contains`, `and`, ... is required only where a
//!   word would otherwise run on (`"v1"in Tags` is accepted).
//! * A quoted value is always a string: go-bexpr reads a value such as
//!   `"/a/b"` as a JSON pointer and compares with `a/b`.
//! * Not supported: go-bexpr's inline value lists (`"a" in ["a", "b"]`,
//!   reported as [`FilterError::Unsupported`]) and the ordering operators
//!   (`<`, `<=`, `>`, `>=`) of newer go-bexpr versions, which Consul does not
//!   document.
//! * Nesting of parentheses and `not` is limited to [`MAX_NESTING`] levels.

use std::fmt;

use serde_json::{Map, Value};

mod regex;
#[cfg(test)]
mod tests;

use regex::{Regex, RegexError};

/// How deeply parentheses and `not` may nest.
pub const MAX_NESTING: usize = 64;

/// Consul's prefix for every error about a filter it could not parse.
const PARSE_PREFIX: &str = "Failed to create boolean expression evaluator";

/// Why a filter was refused or could not be evaluated against a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The expression is not valid; `at` is the byte offset where parsing
    /// failed, `line` and `col` the same position counted from 1 (columns
    /// in characters).
    #[error("{PARSE_PREFIX}: {line}:{col} ({at}): {msg}")]
    Parse {
        /// Byte offset into the expression.
        at: usize,
        /// 1-based line of `at`.
        line: usize,
        /// 1-based column of `at`, in characters.
        col: usize,
        /// What was expected and what was found.
        msg: String,
    },
    /// Valid go-bexpr that this implementation does not support.
    #[error("{PARSE_PREFIX}: unsupported: {0}")]
    Unsupported(String),
    /// The selector does not lead to a value of this row: a struct field
    /// that does not exist, or a path through a string or number.
    #[error("Failed to evaluate filter: error finding value in datum: {0}")]
    BadSelector(String),
    /// The operator does not apply to the value found, or the literal
    /// cannot be read as the value's type.
    #[error("Failed to evaluate filter: {0}")]
    Evaluation(String),
}

/// A parsed filter expression; parse once, evaluate against many rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match(Box<Match>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
}

impl Op {
    /// The result when the selector names a key missing from a map.
    fn not_present(self) -> bool {
        matches!(
            self,
            Op::NotEqual | Op::NotIn | Op::IsEmpty | Op::NotMatches
        )
    }

    fn negated(self) -> bool {
        matches!(
            self,
            Op::NotEqual | Op::NotIn | Op::IsNotEmpty | Op::NotMatches
        )
    }
}

/// The written operator, before `contains` and `in` are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpToken {
    Equal,
    NotEqual,
    IsEmpty,
    IsNotEmpty,
    In,
    NotIn,
    Contains,
    NotContains,
    Matches,
    NotMatches,
}

impl OpToken {
    fn text(self) -> &'static str {
        match self {
            OpToken::Equal => "==",
            OpToken::NotEqual => "!=",
            OpToken::IsEmpty => "is empty",
            OpToken::IsNotEmpty => "is not empty",
            OpToken::In => "in",
            OpToken::NotIn => "not in",
            OpToken::Contains => "contains",
            OpToken::NotContains => "not contains",
            OpToken::Matches => "matches",
            OpToken::NotMatches => "not matches",
        }
    }
}

/// A path into a row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(is_ident_char)
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '/'
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.path.iter().enumerate() {
            let numeric = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
            if i == 0 && is_ident(seg) {
                f.write_str(seg)?;
            } else if i > 0 && (is_ident(seg) || numeric) {
                write!(f, ".{seg}")?;
            } else {
                write!(f, "[{seg:?}]")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Match {
    selector: Selector,
    op: Op,
    /// The literal; empty for `is empty`.
    value: String,
    /// Compiled `value` for `matches`.
    regex: Option<Regex>,
}

impl Filter {
    /// Parses a filter expression; the error names the offset and the
    /// token where parsing failed.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let mut parser = Parser {
            src: expr,
            pos: 0,
            depth: 0,
        };
        let parsed = parser.parse_input().map_err(|e| e.into_error(expr))?;
        Ok(Filter { expr: parsed })
    }

    /// Whether `row` matches. A key missing from a map is an absent value
    /// (`==` false, `!=` true, `is empty` true); a missing struct field is
    /// [`FilterError::BadSelector`] (see the module docs for how maps and
    /// structs are told apart).
    pub fn matches(&self, row: &Value) -> Result<bool, FilterError> {
        eval(&self.expr, row)
    }
}

/// Keeps the rows of `rows` that match `filter`, in order; stops at the
/// first evaluation error.
pub fn apply(filter: &Filter, rows: Vec<Value>) -> Result<Vec<Value>, FilterError> {
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        if filter.matches(&row)? {
            kept.push(row);
        }
    }
    Ok(kept)
}

// ---------------------------------------------------------------------------
// Parsing

/// A parse failure before it is turned into a [`FilterError`].
#[derive(Debug)]
enum PErr {
    At { at: usize, msg: String },
    Unsupported(String),
}

impl PErr {
    fn at(&self) -> usize {
        match self {
            PErr::At { at, .. } => *at,
            PErr::Unsupported(_) => usize::MAX,
        }
    }

    fn into_error(self, src: &str) -> FilterError {
        match self {
            PErr::Unsupported(msg) => FilterError::Unsupported(msg),
            PErr::At { at, msg } => {
                let at = at.min(src.len());
                let before = src.get(..at).unwrap_or(src);
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let col = before[line_start..].chars().count() + 1;
                FilterError::Parse { at, line, col, msg }
            }
        }
    }
}

type PResult<T> = Result<T, PErr>;

/// The left-hand side of a match before the operator tells its role.
enum Operand {
    /// A selector; as a value, its path joined with dots (as go-bexpr).
    Selector(Selector),
    Str {
        text: String,
        double_quoted: bool,
    },
    Number(String),
}

impl Operand {
    fn describe(&self) -> String {
        match self {
            Operand::Selector(s) => format!("selector {s}"),
            Operand::Str { text, .. } => format!("string {text:?}"),
            Operand::Number(n) => format!("number {n}"),
        }
    }

    fn into_value(self) -> String {
        match self {
            Operand::Selector(s) => s.path.join("."),
            Operand::Str { text, .. } => text,
            Operand::Number(n) => n,
        }
    }

    fn into_selector(self) -> Option<Selector> {
        match self {
            Operand::Selector(s) => Some(s),
            Operand::Str {
                text,
                double_quoted: true,
            } if text.starts_with('/') => Some(json_pointer(&text)),
            _ => None,
        }
    }
}

fn json_pointer(text: &str) -> Selector {
    Selector {
        path: text
            .split('/')
            .skip(1)
            .map(|seg| seg.replace("~1", "/").replace("~0", "~"))
            .collect(),
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r' | '\n')) {
            self.pos += 1;
        }
    }

    fn err<T>(&self, at: usize, msg: impl Into<String>) -> PResult<T> {
        Err(PErr::At {
            at,
            msg: msg.into(),
        })
    }

    /// The token at the cursor, for messages: `end of input`, a word in
    /// quotes, or a character.
    fn found(&self) -> String {
        let rest = self.rest();
        match rest.chars().next() {
            None => "end of input".to_string(),
            Some(c) if is_ident_char(c) => {
                let word: String = rest.chars().take_while(|&c| is_ident_char(c)).collect();
                format!("{word:?}")
            }
            Some(c) => format!("{c:?}"),
        }
    }

    /// Whether the word `kw` is at the cursor (not a prefix of a longer
    /// word).
    fn at_keyword(&self, kw: &str) -> bool {
        let rest = self.rest();
        rest.starts_with(kw) && !rest[kw.len()..].chars().next().is_some_and(is_ident_char)
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.at_keyword(kw) {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    fn parse_input(&mut self) -> PResult<Expr> {
        self.skip_ws();
        if self.peek().is_none() {
            return self.err(self.pos, "empty filter expression");
        }
        let expr = self.parse_or()?;
        self.skip_ws();
        if self.peek().is_some() {
            return self.err(
                self.pos,
                format!(
                    "unexpected {}, expected \"and\", \"or\" or end of input",
                    self.found()
                ),
            );
        }
        Ok(expr)
    }

    fn parse_or(&mut self) -> PResult<Expr> {
        let mut items = vec![self.parse_and()?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.eat_keyword("or") {
                items.push(self.parse_and()?);
            } else {
                self.pos = save;
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(Expr::Or(Vec::new()))
        } else {
            Expr::Or(items)
        })
    }

    fn parse_and(&mut self) -> PResult<Expr> {
        let mut items = vec![self.parse_not()?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.eat_keyword("and") {
                items.push(self.parse_not()?);
            } else {
                self.pos = save;
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(Expr::And(Vec::new()))
        } else {
            Expr::And(items)
        })
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(
                self.pos,
                format!("expression nests more than {MAX_NESTING} levels deep"),
            );
        }
        Ok(())
    }

    fn parse_not(&mut self) -> PResult<Expr> {
        self.skip_ws();
        let start = self.pos;
        if self.at_keyword("not") {
            // Ordered choice as in go-bexpr's PEG: first `not <expr>`, then
            // a match whose selector is named "not".
            self.enter()?;
            self.pos += 3;
            let unary = self.parse_not();
            self.depth -= 1;
            let unary_err = match unary {
                Ok(inner) => {
                    return Ok(match inner {
                        Expr::Not(inner) => *inner,
                        other => Expr::Not(Box::new(other)),
                    })
                }
                Err(e) => e,
            };
            self.pos = start;
            return match self.parse_primary() {
                Ok(expr) => Ok(expr),
                Err(e) if e.at() > unary_err.at() => Err(e),
                Err(_) => Err(unary_err),
            };
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> PResult<Expr> {
        self.skip_ws();
        if self.peek() == Some('(') {
            let open = self.pos;
            self.enter()?;
            self.pos += 1;
            let inner = self.parse_or()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return self.err(
                    self.pos,
                    format!(
                        "Unmatched parentheses: expected \")\" to close the \"(\" at {open}, found {}",
                        self.found()
                    ),
                );
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(inner);
        }
        self.parse_match()
    }

    fn parse_match(&mut self) -> PResult<Expr> {
        let start = self.pos;
        let left = self.parse_operand("a selector or value")?;
        self.skip_ws();
        let op_at = self.pos;
        let op = self.parse_operator()?;
        let selector_first = |left: Operand, p: &Self| -> PResult<Selector> {
            let what = left.describe();
            left.into_selector().map_or_else(
                || {
                    p.err(
                        start,
                        format!("expected a selector before {:?}, found {what}", op.text()),
                    )
                },
                Ok,
            )
        };
        let (selector, op, value, value_at) = match op {
            OpToken::Equal
            | OpToken::NotEqual
            | OpToken::Contains
            | OpToken::NotContains
            | OpToken::Matches
            | OpToken::NotMatches => {
                let selector = selector_first(left, self)?;
                self.skip_ws();
                let value_at = self.pos;
                let value = self.parse_value(op)?;
                let op = match op {
                    OpToken::Equal => Op::Equal,
                    OpToken::NotEqual => Op::NotEqual,
                    OpToken::Contains => Op::In,
                    OpToken::NotContains => Op::NotIn,
                    OpToken::Matches => Op::Matches,
                    _ => Op::NotMatches,
                };
                (selector, op, value, value_at)
            }
            OpToken::IsEmpty | OpToken::IsNotEmpty => {
                let selector = selector_first(left, self)?;
                let op = if op == OpToken::IsEmpty {
                    Op::IsEmpty
                } else {
                    Op::IsNotEmpty
                };
                (selector, op, String::new(), op_at)
            }
            OpToken::In | OpToken::NotIn => {
                let value = left.into_value();
                self.skip_ws();
                let sel_at = self.pos;
                let right = self.parse_operand("a selector")?;
                let what = right.describe();
                let Some(selector) = right.into_selector() else {
                    return self.err(
                        sel_at,
                        format!(
                            "Invalid selector: expected a selector after {:?}, found {what}",
                            op.text()
                        ),
                    );
                };
                let op = if op == OpToken::In { Op::In } else { Op::NotIn };
                (selector, op, value, start)
            }
        };
        let regex = if matches!(op, Op::Matches | Op::NotMatches) {
            match Regex::new(&value) {
                Ok(re) => Some(re),
                Err(RegexError::Syntax(msg)) => {
                    return self.err(
                        value_at,
                        format!("Failed to compile regular expression {value:?}: {msg}"),
                    )
                }
                Err(RegexError::Unsupported(msg)) => {
                    return Err(PErr::Unsupported(format!(
                        "\"matches\" with regular expression {value:?}: {msg}"
                    )))
                }
            }
        } else {
            None
        };
        Ok(Expr::Match(Box::new(Match {
            selector,
            op,
            value,
            regex,
        })))
    }

    fn parse_operator(&mut self) -> PResult<OpToken> {
        let at = self.pos;
        let rest = self.rest();
        if rest.starts_with("==") {
            self.pos += 2;
            return Ok(OpToken::Equal);
        }
        if rest.starts_with("!=") {
            self.pos += 2;
            return Ok(OpToken::NotEqual);
        }
        if self.eat_keyword("is") {
            self.skip_ws();
            if self.eat_keyword("empty") {
                return Ok(OpToken::IsEmpty);
            }
            if self.eat_keyword("not") {
                self.skip_ws();
                if self.eat_keyword("empty") {
                    return Ok(OpToken::IsNotEmpty);
                }
                return self.err(
                    self.pos,
                    format!(
                        "expected \"empty\" after \"is not\", found {}",
                        self.found()
                    ),
                );
            }
            return self.err(
                self.pos,
                format!(
                    "expected \"empty\" or \"not empty\" after \"is\", found {}",
                    self.found()
                ),
            );
        }
        if self.eat_keyword("in") {
            return Ok(OpToken::In);
        }
        if self.eat_keyword("contains") {
            return Ok(OpToken::Contains);
        }
        if self.eat_keyword("matches") {
            return Ok(OpToken::Matches);
        }
        if self.eat_keyword("not") {
            self.skip_ws();
            if self.eat_keyword("in") {
                return Ok(OpToken::NotIn);
            }
            if self.eat_keyword("contains") {
                return Ok(OpToken::NotContains);
            }
            if self.eat_keyword("matches") {
                return Ok(OpToken::NotMatches);
            }
            return self.err(
                self.pos,
                format!(
                    "expected \"in\", \"contains\" or \"matches\" after \"not\", found {}",
                    self.found()
                ),
            );
        }
        for unsupported in ["<=", ">=", "<", ">"] {
            if rest.starts_with(unsupported) {
                return Err(PErr::Unsupported(format!(
                    "the ordering operator {unsupported:?} (at {at})"
                )));
            }
        }
        self.err(
            at,
            format!(
                "expected an operator (==, !=, is empty, is not empty, in, not in, contains, not contains, matches, not matches), found {}",
                self.found()
            ),
        )
    }

    /// A selector, string or number; `what` names what was expected.
    fn parse_operand(&mut self, what: &str) -> PResult<Operand> {
        let at = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() => Ok(Operand::Selector(self.parse_selector()?)),
            Some(q @ ('"' | '`')) => Ok(Operand::Str {
                text: self.parse_string()?,
                double_quoted: q == '"',
            }),
            Some(c) if c == '-' || c.is_ascii_digit() => Ok(Operand::Number(self.parse_number()?)),
            Some('[') => Err(PErr::Unsupported(format!(
                "inline value lists such as [\"a\", \"b\"] (at {at})"
            ))),
            _ => self.err(at, format!("expected {what}, found {}", self.found())),
        }
    }

    /// The value after `==`, `contains` or `matches`.
    fn parse_value(&mut self, op: OpToken) -> PResult<String> {
        let at = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() => Ok(self.parse_selector()?.path.join(".")),
            Some('"' | '`') => self.parse_string(),
            Some(c) if c == '-' || c.is_ascii_digit() => self.parse_number(),
            _ => self.err(
                at,
                format!(
                    "expected a value (a quoted string, number or bare word) after {:?}, found {}",
                    op.text(),
                    self.found()
                ),
            ),
        }
    }

    fn parse_ident(&mut self) -> String {
        let word: String = self
            .rest()
            .chars()
            .take_while(|&c| is_ident_char(c))
            .collect();
        self.pos += word.len();
        word
    }

    fn parse_selector(&mut self) -> PResult<Selector> {
        let start = self.pos;
        let mut path = vec![self.parse_ident()];
        loop {
            match self.peek() {
                Some('.') => {
                    let dot = self.pos;
                    self.pos += 1;
                    match self.peek() {
                        Some(c) if c.is_ascii_alphabetic() => path.push(self.parse_ident()),
                        Some(c) if c.is_ascii_digit() => {
                            let digits: String = self
                                .rest()
                                .chars()
                                .take_while(char::is_ascii_digit)
                                .collect();
                            self.pos += digits.len();
                            path.push(digits);
                        }
                        _ => {
                            return self.err(
                                dot,
                                format!(
                                    "expected a field name or index after \".\", found {}",
                                    self.found()
                                ),
                            )
                        }
                    }
                }
                Some('[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if !matches!(self.peek(), Some('"' | '`')) {
                        return self.err(
                            self.pos,
                            format!(
                                "Invalid index: expected a quoted string after \"[\", found {}",
                                self.found()
                            ),
                        );
                    }
                    let key = self.parse_string()?;
                    self.skip_ws();
                    if self.peek() != Some(']') {
                        return self.err(
                            self.pos,
                            format!(
                                "Unclosed index expression: expected \"]\", found {}",
                                self.found()
                            ),
                        );
                    }
                    self.pos += 1;
                    path.push(key);
                }
                Some('-') if self.peek2().is_some_and(is_ident_char) => {
                    let word: String = self.src[start..]
                        .chars()
                        .take_while(|&c| is_ident_char(c) || matches!(c, '-' | '.'))
                        .collect();
                    return self.err(
                        self.pos,
                        format!(
                            "\"-\" cannot appear in a selector or bare word ({word:?}): quote a value (\"{word}\") or index a map key (Meta[\"some-key\"])"
                        ),
                    );
                }
                _ => return Ok(Selector { path }),
            }
        }
    }

    fn parse_number(&mut self) -> PResult<String> {
        let start = self.pos;
        let invalid = |p: &Self| {
            let word: String = p.src[start..]
                .chars()
                .take_while(|c| !matches!(c, ' ' | '\t' | '\r' | '\n' | ')'))
                .collect();
            p.err(start, format!("Invalid number literal {word:?}"))
        };
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        match self.peek() {
            Some('0') => self.pos += 1,
            Some(c) if c.is_ascii_digit() => {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            _ => return invalid(self),
        }
        if self.peek() == Some('.') {
            self.pos += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return invalid(self);
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        if !matches!(self.peek(), None | Some(' ' | '\t' | '\r' | '\n' | ')')) {
            return invalid(self);
        }
        Ok(self.src[start..self.pos].to_string())
    }

    /// A double-quoted (Go escapes) or backtick (raw) string.
    fn parse_string(&mut self) -> PResult<String> {
        let start = self.pos;
        let Some(quote) = self.bump() else {
            return self.err(start, "expected a string");
        };
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.bump() else {
                return self.err(start, "Unterminated string literal");
            };
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                out.push(self.parse_escape(at)?);
            } else {
                out.push(c);
            }
        }
    }

    fn parse_escape(&mut self, at: usize) -> PResult<char> {
        let Some(c) = self.bump() else {
            return self.err(at, "Unterminated string literal");
        };
        let hex = |p: &mut Self, n: usize| -> PResult<char> {
            let digits: String = p.rest().chars().take(n).collect();
            if digits.len() != n || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                return p.err(
                    at,
                    format!("invalid escape sequence \\{c}{digits} in string"),
                );
            }
            p.pos += n;
            match u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
            {
                Some(ch) => Ok(ch),
                None => p.err(
                    at,
                    format!("invalid escape sequence \\{c}{digits} in string"),
                ),
            }
        };
        Ok(match c {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '0'..='7' => {
                let digits: String = self.src[at + 1..].chars().take(3).collect();
                if digits.len() != 3 || !digits.chars().all(|d| ('0'..='7').contains(&d)) {
                    return self.err(at, format!("invalid escape sequence \\{digits} in string"));
                }
                self.pos = at + 4;
                let n = u32::from_str_radix(&digits, 8).unwrap_or(0);
                if n > 255 {
                    return self.err(at, format!("invalid escape sequence \\{digits} in string"));
                }
                char::from_u32(n).unwrap_or('\0')
            }
            other => return self.err(at, format!("invalid escape sequence \\{other} in string")),
        })
    }
}

// ---------------------------------------------------------------------------
// Evaluation

fn eval(expr: &Expr, row: &Value) -> Result<bool, FilterError> {
    match expr {
        Expr::Or(items) => {
            for item in items {
                if eval(item, row)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Expr::And(items) => {
            for item in items {
                if !eval(item, row)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Expr::Not(inner) => Ok(!eval(inner, row)?),
        Expr::Match(m) => eval_at(m, row, 0, None),
    }
}

/// Field names whose objects are maps even when their keys look like
/// struct fields.
fn is_map_field(name: &str) -> bool {
    name.ends_with("Meta")
        || name.ends_with("TaggedAddresses")
        || name == "Config"
        || name == "Header"
}

/// Whether an object reached through field `name` (`None`: the row) is a
/// Go struct rather than a map; see the module docs.
fn is_struct_like(map: &Map<String, Value>, name: Option<&str>) -> bool {
    match name {
        None => true,
        Some(name) => {
            !is_map_field(name)
                && !map.is_empty()
                && map
                    .keys()
                    .all(|k| k.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        }
    }
}

fn prefix(m: &Match, depth: usize) -> Selector {
    Selector {
        path: m.selector.path[..depth.min(m.selector.path.len())].to_vec(),
    }
}

/// Walks the selector from segment `depth` in `value`, reached through the
/// field `name`.
fn eval_at(
    m: &Match,
    value: &Value,
    depth: usize,
    name: Option<&str>,
) -> Result<bool, FilterError> {
    let Some(seg) = m.selector.path.get(depth) else {
        return apply_op(m, value);
    };
    match value {
        Value::Object(map) => match map.get(seg) {
            Some(v) => eval_at(m, v, depth + 1, Some(seg)),
            None if is_struct_like(map, name) => {
                let parent = if depth == 0 {
                    "the row".to_string()
                } else {
                    format!("{}", prefix(m, depth))
                };
                Err(FilterError::BadSelector(format!(
                    "selector {}: {parent} has no field {seg:?}",
                    m.selector
                )))
            }
            None => Ok(m.op.not_present()),
        },
        // A nil map or list: nothing below it.
        Value::Null => Ok(m.op.not_present()),
        Value::Array(items) => {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                match seg.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(item) => eval_at(m, item, depth + 1, name),
                    // Past the end: absent, like a missing map key.
                    None => Ok(m.op.not_present()),
                }
            } else {
                // Through a list by name: any element.
                for item in items {
                    if eval_at(m, item, depth, name)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            Err(FilterError::BadSelector(format!(
                "selector {}: {} is a {}, it has no field {seg:?}",
                m.selector,
                prefix(m, depth),
                type_name(value)
            )))
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether the JSON number `n` equals the literal, or `None` when the
/// literal is not a number.
fn number_equals(n: &serde_json::Number, literal: &str) -> Option<bool> {
    let literal = literal.trim();
    if let Some(a) = n.as_i64() {
        if let Ok(b) = literal.parse::<i64>() {
            return Some(a == b);
        }
    }
    if let Some(a) = n.as_u64() {
        if let Ok(b) = literal.parse::<u64>() {
            return Some(a == b);
        }
    }
    let b: f64 = literal.parse().ok().filter(|f: &f64| f.is_finite())?;
    if !literal
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None; // "inf", "NaN" and the like are not numbers here
    }
    Some(n.as_f64() == Some(b))
}

/// `value == literal` for a scalar; `Ok(None)` when the literal cannot be
/// read as the value's type.
fn scalar_equals(value: &Value, literal: &str) -> Option<bool> {
    match value {
        Value::String(s) => Some(s == literal),
        Value::Number(n) => number_equals(n, literal),
        Value::Bool(b) => parse_bool(literal).map(|l| l == *b),
        Value::Null => Some(literal.is_empty()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn apply_op(m: &Match, value: &Value) -> Result<bool, FilterError> {
    let positive = match m.op {
        Op::Equal | Op::NotEqual => match value {
            Value::Array(_) | Value::Object(_) => {
                return Err(FilterError::Evaluation(format!(
                    "selector {} is a {}; \"==\" and \"!=\" compare strings, numbers and booleans only (use \"in\", \"contains\" or \"is empty\")",
                    m.selector,
                    type_name(value)
                )))
            }
            _ => scalar_equals(value, &m.value).ok_or_else(|| {
                FilterError::Evaluation(format!(
                    "selector {} is a {}; cannot compare it with {:?}",
                    m.selector,
                    type_name(value),
                    m.value
                ))
            })?,
        },
        Op::In | Op::NotIn => match value {
            Value::String(s) => s.contains(m.value.as_str()),
            Value::Object(map) => map.contains_key(&m.value),
            Value::Null => false,
            Value::Array(items) => {
                let mut found = false;
                for item in items {
                    match item {
                        Value::Array(_) | Value::Object(_) => {
                            return Err(FilterError::Evaluation(format!(
                                "selector {} holds a {}; \"in\" and \"contains\" compare list elements that are strings, numbers or booleans",
                                m.selector,
                                type_name(item)
                            )))
                        }
                        Value::Null => {}
                        _ => {
                            if scalar_equals(item, &m.value) == Some(true) {
                                found = true;
                                break;
                            }
                        }
                    }
                }
                found
            }
            Value::Number(_) | Value::Bool(_) => {
                return Err(FilterError::Evaluation(format!(
                    "Cannot perform in/contains operations on a {} for selector {}",
                    type_name(value),
                    m.selector
                )))
            }
        },
        Op::IsEmpty | Op::IsNotEmpty => match value {
            Value::String(s) => s.is_empty(),
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            Value::Null => true,
            Value::Number(_) | Value::Bool(_) => {
                return Err(FilterError::Evaluation(format!(
                    "selector {} is a {}; \"is empty\" applies to strings, lists and maps",
                    m.selector,
                    type_name(value)
                )))
            }
        },
        Op::Matches | Op::NotMatches => {
            let text = match value {
                Value::String(s) => s.as_str(),
                Value::Null => "",
                _ => {
                    return Err(FilterError::Evaluation(format!(
                        "selector {} is a {}; \"matches\" applies to strings only",
                        m.selector,
                        type_name(value)
                    )))
                }
            };
            match &m.regex {
                Some(re) => re.is_match(text),
                None => false,
            }
        }
    };
    Ok(positive != m.op.negated())
}
