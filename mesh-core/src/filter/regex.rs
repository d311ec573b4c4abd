//! A small regular-expression matcher for the `matches` operator: a subset
//! of Go's RE2 syntax, compiled to a Thompson NFA and run as a Pike VM, so
//! matching is linear in the text (no backtracking blow-ups) and bounded in
//! memory.
//!
//! Only "does it match anywhere" is answered (Go's `regexp.MatchString`), so
//! captures and greedy/lazy preferences do not matter and are not tracked.
//!
//! Supported: literals, `.`, `[...]` classes with ranges, negation, Perl
//! classes (`\d \w \s` and their negations) and POSIX classes
//! (`[[:alpha:]]`), anchors `^ $ \A \z \b \B`, groups `( )`, `(?: )`,
//! `(?P<name> )`, `(?<name> )`, flags `i m s U` (`(?i)`, `(?i: )`),
//! alternation `|`, repetition `* + ? {n} {n,} {n,m}` with an optional lazy
//! `?`. Unsupported (reported as such): Unicode classes (`\p{..}`), `\Q..\E`,
//! `\C`. Case folding is simple (one character to one character).

use std::fmt;

/// At most this many instructions per compiled expression (RE2 refuses
/// large programs too).
const MAX_PROGRAM: usize = 10_000;
/// RE2's limit on `{n,m}` counts.
const MAX_REPEAT: u32 = 1000;
/// Nesting of groups.
const MAX_NESTING: usize = 100;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RegexError {
    /// Not a valid pattern.
    Syntax(String),
    /// Valid in Go, but this matcher does not implement it.
    Unsupported(String),
}

impl fmt::Display for RegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegexError::Syntax(m) | RegexError::Unsupported(m) => f.write_str(m),
        }
    }
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Regex {
    prog: Vec<Inst>,
}

#[derive(Debug, Clone, PartialEq)]
struct Class {
    /// Sorted, inclusive code-point ranges.
    ranges: Vec<(u32, u32)>,
    negated: bool,
    fold: bool,
}

impl Class {
    fn contains_exact(&self, c: char) -> bool {
        let c = c as u32;
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
    }

    fn matches(&self, c: char) -> bool {
        let hit = self.contains_exact(c)
            || (self.fold && fold_variants(c).any(|v| self.contains_exact(v)));
        hit != self.negated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    TextStart,
    TextEnd,
    LineStart,
    LineEnd,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Debug, Clone, PartialEq)]
enum Inst {
    Char { c: char, fold: bool },
    Any { newline: bool },
    Class(Box<Class>),
    Look(Look),
    Split(usize, usize),
    Jmp(usize),
    Match,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Empty,
    Char {
        c: char,
        fold: bool,
    },
    Any {
        newline: bool,
    },
    Class(Class),
    Look(Look),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    fold: bool,
    multiline: bool,
    dot_newline: bool,
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    flags: Flags,
    depth: usize,
    pattern: &'a str,
}

fn syntax(msg: impl Into<String>) -> RegexError {
    RegexError::Syntax(msg.into())
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn parse_alt(&mut self) -> Result<Node, RegexError> {
        let mut alts = vec![self.parse_concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alts.push(self.parse_concat()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(alts)
        })
    }

    fn parse_concat(&mut self) -> Result<Node, RegexError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = match self.parse_atom()? {
                Some(atom) => atom,
                None => continue, // a flag group such as (?i)
            };
            let atom = self.parse_repeats(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// `{n}`, `{n,}` or `{n,m}` at the cursor, or `None` (then `{` is a
    /// literal, as in Go).
    fn try_counted(&mut self) -> Result<Option<(u32, Option<u32>)>, RegexError> {
        let start = self.pos;
        if self.peek() != Some('{') {
            return Ok(None);
        }
        self.pos += 1;
        let number = |p: &mut Self| -> Option<u32> {
            let from = p.pos;
            let mut n: u32 = 0;
            while let Some(d) = p.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d);
                p.pos += 1;
            }
            (p.pos > from).then_some(n)
        };
        let Some(min) = number(self) else {
            self.pos = start;
            return Ok(None);
        };
        let max = if self.peek() == Some(',') {
            self.pos += 1;
            if self.peek() == Some('}') {
                None
            } else {
                match number(self) {
                    Some(m) => Some(m),
                    None => {
                        self.pos = start;
                        return Ok(None);
                    }
                }
            }
        } else {
            Some(min)
        };
        if self.peek() != Some('}') {
            self.pos = start;
            return Ok(None);
        }
        self.pos += 1;
        if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT || m < min) {
            let text: String = self.chars[start..self.pos].iter().collect();
            return Err(syntax(format!("invalid repeat count: `{text}`")));
        }
        Ok(Some((min, max)))
    }

    fn parse_repeats(&mut self, mut atom: Node) -> Result<Node, RegexError> {
        let mut repeated = false;
        loop {
            let (min, max) = match self.peek() {
                Some('*') => {
                    self.pos += 1;
                    (0, None)
                }
                Some('+') => {
                    self.pos += 1;
                    (1, None)
                }
                Some('?') => {
                    self.pos += 1;
                    (0, Some(1))
                }
                Some('{') => match self.try_counted()? {
                    Some(counts) => counts,
                    None => return Ok(atom),
                },
                _ => return Ok(atom),
            };
            if repeated {
                return Err(syntax("invalid nested repetition operator"));
            }
            repeated = true;
            // A lazy marker changes preference only, not whether it matches.
            if self.peek() == Some('?') {
                self.pos += 1;
            }
            if matches!(atom, Node::Look(_) | Node::Empty) && max.is_none() {
                // x* of an empty-width x matches like x?.
                atom = Node::Repeat {
                    node: Box::new(atom),
                    min: min.min(1),
                    max: Some(1),
                };
            } else {
                atom = Node::Repeat {
                    node: Box::new(atom),
                    min,
                    max,
                };
            }
        }
    }

    fn parse_flags(&mut self) -> Result<Option<Node>, RegexError> {
        // After "(?".
        let mut flags = self.flags;
        let mut negate = false;
        loop {
            match self.bump() {
                Some('i') => flags.fold = !negate,
                Some('m') => flags.multiline = !negate,
                Some('s') => flags.dot_newline = !negate,
                Some('U') => {} // ungreedy: no effect on whether it matches
                Some('-') if !negate => negate = true,
                Some(')') => {
                    self.flags = flags;
                    return Ok(None);
                }
                Some(':') => {
                    let saved = self.flags;
                    self.flags = flags;
                    let inner = self.parse_group_body()?;
                    self.flags = saved;
                    return Ok(Some(inner));
                }
                _ => {
                    return Err(syntax(format!(
                        "invalid or unsupported Perl syntax in `{}`",
                        self.pattern
                    )))
                }
            }
        }
    }

    /// The inside of a group up to and including its `)`.
    fn parse_group_body(&mut self) -> Result<Node, RegexError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(syntax("expression nests too deeply"));
        }
        let saved = self.flags;
        let inner = self.parse_alt()?;
        self.flags = saved;
        self.depth -= 1;
        if self.bump() != Some(')') {
            return Err(syntax(format!("missing closing ): `{}`", self.pattern)));
        }
        Ok(inner)
    }

    fn parse_atom(&mut self) -> Result<Option<Node>, RegexError> {
        let Some(c) = self.bump() else {
            return Ok(Some(Node::Empty));
        };
        let node = match c {
            '(' => {
                if self.peek() == Some('?') {
                    self.pos += 1;
                    let named = match (self.peek(), self.peek_at(1)) {
                        (Some('P'), Some('<')) => {
                            self.pos += 2;
                            true
                        }
                        (Some('<'), _) => {
                            self.pos += 1;
                            true
                        }
                        _ => false,
                    };
                    if named {
                        let from = self.pos;
                        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                            self.pos += 1;
                        }
                        if self.pos == from || self.bump() != Some('>') {
                            return Err(syntax("invalid named capture"));
                        }
                        self.parse_group_body()?
                    } else {
                        return self.parse_flags();
                    }
                } else {
                    self.parse_group_body()?
                }
            }
            '*' | '+' | '?' => {
                return Err(syntax(format!(
                    "missing argument to repetition operator: `{c}`"
                )))
            }
            '.' => Node::Any {
                newline: self.flags.dot_newline,
            },
            '^' => Node::Look(if self.flags.multiline {
                Look::LineStart
            } else {
                Look::TextStart
            }),
            '$' => Node::Look(if self.flags.multiline {
                Look::LineEnd
            } else {
                Look::TextEnd
            }),
            '[' => Node::Class(self.parse_class()?),
            '\\' => self.parse_escape()?,
            c => Node::Char {
                c,
                fold: self.flags.fold,
            },
        };
        Ok(Some(node))
    }

    fn parse_escape(&mut self) -> Result<Node, RegexError> {
        let Some(c) = self.peek() else {
            return Err(syntax("trailing backslash at end of expression"));
        };
        if let Some(class) = self.perl_class(c) {
            self.pos += 1;
            return Ok(Node::Class(class));
        }
        let look = match c {
            'A' => Some(Look::TextStart),
            'z' => Some(Look::TextEnd),
            'b' => Some(Look::WordBoundary),
            'B' => Some(Look::NotWordBoundary),
            _ => None,
        };
        if let Some(look) = look {
            self.pos += 1;
            return Ok(Node::Look(look));
        }
        let c = self.escaped_char()?;
        Ok(Node::Char {
            c,
            fold: self.flags.fold,
        })
    }

    /// `\d \w \s` and their negations, without consuming.
    fn perl_class(&self, c: char) -> Option<Class> {
        let (ranges, negated): (&[(u32, u32)], bool) = match c {
            'd' => (DIGIT, false),
            'D' => (DIGIT, true),
            'w' => (WORD, false),
            'W' => (WORD, true),
            's' => (SPACE, false),
            'S' => (SPACE, true),
            _ => return None,
        };
        Some(Class {
            ranges: ranges.to_vec(),
            negated,
            fold: false,
        })
    }

    /// A single character after `\` (which is consumed already).
    fn escaped_char(&mut self) -> Result<char, RegexError> {
        let Some(c) = self.bump() else {
            return Err(syntax("trailing backslash at end of expression"));
        };
        Ok(match c {
            'a' => '\u{7}',
            'f' => '\u{c}',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'v' => '\u{b}',
            'x' => {
                let digits: String = if self.peek() == Some('{') {
                    self.pos += 1;
                    let mut s = String::new();
                    loop {
                        match self.bump() {
                            Some('}') => break,
                            Some(h) if h.is_ascii_hexdigit() && s.len() < 8 => s.push(h),
                            _ => return Err(syntax("invalid escape sequence: `\\x{`")),
                        }
                    }
                    s
                } else {
                    let mut s = String::new();
                    for _ in 0..2 {
                        match self.bump() {
                            Some(h) if h.is_ascii_hexdigit() => s.push(h),
                            _ => return Err(syntax("invalid escape sequence: `\\x`")),
                        }
                    }
                    s
                };
                u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| syntax(format!("invalid escape sequence: `\\x{digits}`")))?
            }
            '0'..='7' => {
                // Go accepts octal \0, \01, \012 (and \1-\7 only when not
                // a backreference, which RE2 does not have).
                if c != '0' {
                    return Err(syntax(format!("invalid escape sequence: `\\{c}`")));
                }
                let mut n = 0u32;
                let mut k = 0;
                while k < 2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            n = n * 8 + d;
                            self.pos += 1;
                            k += 1;
                        }
                        None => break,
                    }
                }
                char::from_u32(n).unwrap_or('\0')
            }
            'p' | 'P' => {
                return Err(RegexError::Unsupported(format!(
                    "Unicode character classes (`\\{c}`) are not supported"
                )))
            }
            'Q' | 'C' => return Err(RegexError::Unsupported(format!("`\\{c}` is not supported"))),
            c if c.is_ascii_punctuation() => c,
            c => return Err(syntax(format!("invalid escape sequence: `\\{c}`"))),
        })
    }

    fn parse_class(&mut self) -> Result<Class, RegexError> {
        // After '['.
        let mut negated = false;
        if self.peek() == Some('^') {
            self.pos += 1;
            negated = true;
        }
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.bump() else {
                return Err(syntax(format!("missing closing ]: `{}`", self.pattern)));
            };
            if c == ']' && !first {
                break;
            }
            first = false;
            if c == '[' && self.peek() == Some(':') {
                if let Some(posix) = self.posix_class() {
                    ranges.extend(posix?);
                    continue;
                }
            }
            let lo = if c == '\\' {
                if let Some(class) = self.peek().and_then(|e| self.perl_class(e)) {
                    self.pos += 1;
                    if class.negated {
                        ranges.extend(complement(&class.ranges));
                    } else {
                        ranges.extend(class.ranges);
                    }
                    continue;
                }
                self.escaped_char()?
            } else {
                c
            };
            let hi = if self.peek() == Some('-') && self.peek_at(1).is_some_and(|n| n != ']') {
                self.pos += 1;
                let h = match self.bump() {
                    Some('\\') => self.escaped_char()?,
                    Some(h) => h,
                    None => return Err(syntax("missing closing ]")),
                };
                if h < lo {
                    return Err(syntax(format!("invalid character class range: `{lo}-{h}`")));
                }
                h
            } else {
                lo
            };
            ranges.push((lo as u32, hi as u32));
        }
        Ok(Class {
            ranges: normalize(ranges),
            negated,
            fold: self.flags.fold,
        })
    }

    /// `[:name:]` or `[:^name:]` with the cursor after the `[`; `None` when
    /// it is not one (then `[` is a literal).
    fn posix_class(&mut self) -> Option<Result<Vec<(u32, u32)>, RegexError>> {
        let rest: String = self.chars[self.pos..].iter().take(12).collect();
        let end = rest[1..].find(":]")? + 1;
        let mut name = &rest[1..end];
        let negated = name.starts_with('^');
        if negated {
            name = &name[1..];
        }
        let ranges: &[(u32, u32)] = match name {
            "alnum" => &[(48, 57), (65, 90), (97, 122)],
            "alpha" => &[(65, 90), (97, 122)],
            "ascii" => &[(0, 127)],
            "blank" => &[(9, 9), (32, 32)],
            "cntrl" => &[(0, 31), (127, 127)],
            "digit" => DIGIT,
            "graph" => &[(33, 126)],
            "lower" => &[(97, 122)],
            "print" => &[(32, 126)],
            "punct" => &[(33, 47), (58, 64), (91, 96), (123, 126)],
            "space" => &[(9, 13), (32, 32)],
            "upper" => &[(65, 90)],
            "word" => WORD,
            "xdigit" => &[(48, 57), (65, 70), (97, 102)],
            _ => {
                return Some(Err(syntax(format!(
                    "invalid character class range: `[:{name}:]`"
                ))))
            }
        };
        self.pos += rest[..end + 2].chars().count();
        Some(Ok(if negated {
            complement(ranges)
        } else {
            ranges.to_vec()
        }))
    }
}

const DIGIT: &[(u32, u32)] = &[(48, 57)];
const WORD: &[(u32, u32)] = &[(48, 57), (65, 90), (95, 95), (97, 122)];
const SPACE: &[(u32, u32)] = &[(9, 10), (12, 13), (32, 32)];

fn normalize(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn complement(ranges: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut next = 0u32;
    for &(lo, hi) in &normalize(ranges.to_vec()) {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = hi.saturating_add(1);
    }
    if next <= char::MAX as u32 {
        out.push((next, char::MAX as u32));
    }
    out
}

/// The other-case forms of `c` that are single characters.
fn fold_variants(c: char) -> impl Iterator<Item = char> {
    let mut lower = c.to_lowercase();
    let lower = match (lower.next(), lower.next()) {
        (Some(l), None) if l != c => Some(l),
        _ => None,
    };
    let mut upper = c.to_uppercase();
    let upper = match (upper.next(), upper.next()) {
        (Some(u), None) if u != c => Some(u),
        _ => None,
    };
    lower.into_iter().chain(upper)
}

fn chars_equal_fold(a: char, b: char) -> bool {
    a == b || fold_variants(a).any(|v| v == b)
}

struct Compiler {
    prog: Vec<Inst>,
}

impl Compiler {
    fn push(&mut self, inst: Inst) -> Result<usize, RegexError> {
        if self.prog.len() >= MAX_PROGRAM {
            return Err(syntax("expression too large"));
        }
        self.prog.push(inst);
        Ok(self.prog.len() - 1)
    }

    fn emit(&mut self, node: &Node) -> Result<(), RegexError> {
        match node {
            Node::Empty => {}
            Node::Char { c, fold } => {
                self.push(Inst::Char { c: *c, fold: *fold })?;
            }
            Node::Any { newline } => {
                self.push(Inst::Any { newline: *newline })?;
            }
            Node::Class(class) => {
                self.push(Inst::Class(Box::new(class.clone())))?;
            }
            Node::Look(look) => {
                self.push(Inst::Look(*look))?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.emit(item)?;
                }
            }
            Node::Alt(alts) => {
                let mut jumps = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    if i + 1 < alts.len() {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(alt)?;
                        jumps.push(self.push(Inst::Jmp(0))?);
                        let next = self.prog.len();
                        self.prog[split] = Inst::Split(split + 1, next);
                    } else {
                        self.emit(alt)?;
                    }
                }
                let end = self.prog.len();
                for j in jumps {
                    self.prog[j] = Inst::Jmp(end);
                }
            }
            Node::Repeat { node, min, max } => {
                for _ in 0..*min {
                    self.emit(node)?;
                }
                match max {
                    None => {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(node)?;
                        self.push(Inst::Jmp(split))?;
                        let end = self.prog.len();
                        self.prog[split] = Inst::Split(split + 1, end);
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.emit(node)?;
                        }
                        let end = self.prog.len();
                        for s in splits {
                            self.prog[s] = Inst::Split(s + 1, end);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Instruction indices in insertion order plus a membership bitmap: the
/// thread list of the Pike VM.
struct ThreadList {
    dense: Vec<usize>,
    member: Vec<bool>,
}

impl ThreadList {
    fn new(n: usize) -> Self {
        Self {
            dense: Vec::with_capacity(n),
            member: vec![false; n],
        }
    }

    fn clear(&mut self) {
        for &pc in &self.dense {
            self.member[pc] = false;
        }
        self.dense.clear();
    }
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Regex {
    /// Compiles `pattern` (Go RE2 syntax, see the module docs).
    pub(super) fn new(pattern: &str) -> Result<Regex, RegexError> {
        let mut parser = Parser {
            chars: pattern.chars().collect(),
            pos: 0,
            flags: Flags::default(),
            depth: 0,
            pattern,
        };
        let node = parser.parse_alt()?;
        if parser.pos < parser.chars.len() {
            // Only a stray ')' stops parse_alt early.
            return Err(syntax(format!("unexpected ): `{pattern}`")));
        }
        let mut compiler = Compiler { prog: Vec::new() };
        compiler.emit(&node)?;
        compiler.push(Inst::Match)?;
        Ok(Regex {
            prog: compiler.prog,
        })
    }

    fn look_holds(look: Look, prev: Option<char>, next: Option<char>) -> bool {
        match look {
            Look::TextStart => prev.is_none(),
            Look::TextEnd => next.is_none(),
            Look::LineStart => prev.is_none() || prev == Some('\n'),
            Look::LineEnd => next.is_none() || next == Some('\n'),
            Look::WordBoundary => is_word(prev) != is_word(next),
            Look::NotWordBoundary => is_word(prev) == is_word(next),
        }
    }

    /// Adds `pc` and everything reachable from it without consuming input;
    /// true when that reaches `Match`.
    fn add_thread(
        &self,
        list: &mut ThreadList,
        stack: &mut Vec<usize>,
        pc: usize,
        prev: Option<char>,
        next: Option<char>,
    ) -> bool {
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if pc >= self.prog.len() || list.member[pc] {
                continue;
            }
            list.member[pc] = true;
            list.dense.push(pc);
            match &self.prog[pc] {
                Inst::Match => return true,
                Inst::Jmp(to) => stack.push(*to),
                Inst::Split(a, b) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Inst::Look(look) => {
                    if Self::look_holds(*look, prev, next) {
                        stack.push(pc + 1);
                    }
                }
                Inst::Char { .. } | Inst::Any { .. } | Inst::Class(_) => {}
            }
        }
        false
    }

    /// Whether the pattern matches anywhere in `text` (Go's `MatchString`).
    pub(super) fn is_match(&self, text: &str) -> bool {
        let n = self.prog.len();
        let mut current = ThreadList::new(n);
        let mut next_list = ThreadList::new(n);
        let mut stack = Vec::new();
        let mut prev: Option<char> = None;
        let mut chars = text.chars().peekable();
        loop {
            let at = chars.peek().copied();
            // Unanchored search: a new thread may start at every position.
            if self.add_thread(&mut current, &mut stack, 0, prev, at) {
                return true;
            }
            let Some(c) = at else {
                return false;
            };
            chars.next();
            let after = chars.peek().copied();
            for i in 0..current.dense.len() {
                let pc = current.dense[i];
                let advance = match &self.prog[pc] {
                    Inst::Char { c: want, fold } => {
                        *want == c || (*fold && chars_equal_fold(*want, c))
                    }
                    Inst::Any { newline } => *newline || c != '\n',
                    Inst::Class(class) => class.matches(c),
                    _ => false,
                };
                if advance && self.add_thread(&mut next_list, &mut stack, pc + 1, Some(c), after) {
                    return true;
                }
            }
            std::mem::swap(&mut current, &mut next_list);
            next_list.clear();
            prev = Some(c);
        }
    }
}
