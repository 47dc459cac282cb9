//! A small cursor over the tokens of one statement, for the hand-written parts of the
//! grammar (the statement headers and stream declarations).

use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::error::{Pos, SqlError};

pub(crate) struct Cursor {
    file: PathBuf,
    tokens: Vec<TokenWithSpan>,
    idx: usize,
    /// Position just past the last token, for "unexpected end" errors.
    end: Pos,
}

impl Cursor {
    pub fn new(file: &Path, tokens: Vec<TokenWithSpan>) -> Self {
        let end = tokens
            .last()
            .map(|t| Pos {
                line: t.span.end.line,
                column: t.span.end.column,
            })
            .unwrap_or_default();
        Self {
            file: file.to_path_buf(),
            tokens,
            idx: 0,
            end,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn skip_ws(&mut self) {
        while let Some(t) = self.tokens.get(self.idx) {
            if matches!(t.token, Token::Whitespace(_)) {
                self.idx += 1;
            } else {
                break;
            }
        }
    }

    /// The next significant token, without consuming it.
    pub fn peek(&mut self) -> Option<&TokenWithSpan> {
        self.skip_ws();
        self.tokens.get(self.idx)
    }

    /// Consumes and returns the next significant token.
    pub fn next(&mut self) -> Option<TokenWithSpan> {
        self.skip_ws();
        let t = self.tokens.get(self.idx).cloned();
        if t.is_some() {
            self.idx += 1;
        }
        t
    }

    /// The next token if it is an unquoted word, upper-cased.
    pub fn peek_word_upper(&mut self) -> Option<String> {
        match self.peek().map(|t| &t.token) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
            _ => None,
        }
    }

    pub fn pos(&mut self) -> Pos {
        let end = self.end;
        self.peek()
            .map(|t| Pos {
                line: t.span.start.line,
                column: t.span.start.column,
            })
            .unwrap_or(end)
    }

    pub fn error_here(&mut self, message: impl Into<String>) -> SqlError {
        let found = match self.peek() {
            Some(t) => format!(", found `{}`", t.token),
            None => ", found the end of the statement".to_string(),
        };
        let pos = self.pos();
        SqlError::new(&self.file, pos, format!("{}{found}", message.into()))
    }

    pub fn error_at(&self, pos: Pos, message: impl Into<String>) -> SqlError {
        SqlError::new(&self.file, pos, message)
    }

    pub fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.peek_word_upper().as_deref() == Some(kw) {
            self.next();
            Ok(())
        } else {
            Err(self.error_here(format!("expected {kw}")))
        }
    }

    pub fn expect_token(&mut self, expected: &Token, what: &str) -> Result<(), SqlError> {
        if self.peek().map(|t| &t.token) == Some(expected) {
            self.next();
            Ok(())
        } else {
            Err(self.error_here(format!("expected {what}")))
        }
    }

    pub fn eat_token(&mut self, expected: &Token) -> bool {
        if self.peek().map(|t| &t.token) == Some(expected) {
            self.next();
            true
        } else {
            false
        }
    }

    /// Consumes one `>`. A `>>` (two closing angle brackets, as in `ARRAY<ARRAY<INT>>`,
    /// which the tokenizer reads as a shift) gives up its first half and stays.
    pub fn eat_close_angle(&mut self) -> bool {
        self.skip_ws();
        let Some(t) = self.tokens.get_mut(self.idx) else {
            return false;
        };
        match t.token {
            Token::Gt => {
                self.idx += 1;
                true
            }
            Token::ShiftRight => {
                t.token = Token::Gt;
                t.span.start.column += 1;
                true
            }
            _ => false,
        }
    }

    /// An identifier: a plain or quoted word. Returns its text and position.
    pub fn ident(&mut self, what: &str) -> Result<(String, Pos), SqlError> {
        let pos = self.pos();
        match self.peek().map(|t| &t.token) {
            Some(Token::Word(w)) => {
                let v = w.value.clone();
                self.next();
                Ok((v, pos))
            }
            _ => Err(self.error_here(format!("expected {what}"))),
        }
    }

    /// A string value: `'single quoted'` or `"double quoted"` (eKuiper's spelling).
    pub fn string_value(&mut self, what: &str) -> Result<(String, Pos), SqlError> {
        let pos = self.pos();
        match self.peek().map(|t| &t.token) {
            Some(Token::SingleQuotedString(s)) => {
                let v = s.clone();
                self.next();
                Ok((v, pos))
            }
            Some(Token::DoubleQuotedString(s)) => {
                let v = s.clone();
                self.next();
                Ok((v, pos))
            }
            Some(Token::Word(w)) if w.quote_style == Some('"') => {
                let v = w.value.clone();
                self.next();
                Ok((v, pos))
            }
            _ => Err(self.error_here(format!("expected {what} as a quoted string"))),
        }
    }

    /// The remaining tokens, whitespace included, for handing to the SQL parser.
    pub fn rest(&mut self) -> Vec<TokenWithSpan> {
        let rest = self.tokens.split_off(self.idx);
        self.idx = self.tokens.len();
        rest
    }

    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }
}
