//! Python literals as the public client accepts them on the command line
//! (`--from-literal "{'K': 'V'}"`, `ENTRYPOINT "['python', 'x.py']"`). Users copy these from the
//! JCloud docs, so we take both JSON and the Python spelling (single quotes, `True`, `None`,
//! trailing commas) instead of making them rewrite the quoting.

use serde_json::{Map, Number, Value};

/// Parses JSON, or else a Python literal (`ast.literal_eval` subset: str, int, float, bool,
/// None, list, tuple, dict).
pub fn parse(text: &str) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

/// A dict of string → string, as secrets need. Non-string scalars are stringified (the public
/// client would send them as JSON numbers, which a Kubernetes secret then rejects).
pub fn parse_str_dict(text: &str) -> Result<Map<String, Value>, String> {
    match parse(text)? {
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(_) => Ok((k, v)),
                Value::Number(n) => Ok((k, Value::String(n.to_string()))),
                Value::Bool(b) => Ok((k, Value::String(if b { "True" } else { "False" }.into()))),
                other => Err(format!("the value of {k:?} must be a string, not {other}")),
            })
            .collect(),
        other => Err(format!(
            "expected a dict like \"{{'KEY': 'value'}}\", got {other}"
        )),
    }
}

/// A list of strings (an entrypoint). A plain command line without brackets is split on
/// whitespace, so `"python main.py"` works as well as `"['python', 'main.py']"`.
pub fn parse_str_list(text: &str) -> Result<Vec<String>, String> {
    let t = text.trim();
    if !t.starts_with('[') && !t.starts_with('(') {
        let parts: Vec<String> = t.split_whitespace().map(str::to_string).collect();
        if parts.is_empty() {
            return Err("the entrypoint is empty".into());
        }
        return Ok(parts);
    }
    match parse(t)? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!("entrypoint items must be strings, not {other}")),
            })
            .collect(),
        other => Err(format!(
            "expected a list like \"['python', 'main.py']\", got {other}"
        )),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!(
            "not a valid JSON or Python literal at character {}: {what} (in {:?})",
            self.i + 1,
            self.text
        )
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            None => Err(self.err("expected a value")),
            Some(b'{') => self.dict(),
            Some(b'[') => self.seq(b']'),
            Some(b'(') => self.seq(b')'),
            Some(b'\'' | b'"') => Ok(Value::String(self.string()?)),
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() || c == b'.' => self.number(),
            Some(_) => self.word(),
        }
    }

    fn dict(&mut self) -> Result<Value, String> {
        self.i += 1; // '{'
        let mut m = Map::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Value::Object(m));
            }
            let key = match self.value()? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                other => return Err(self.err(&format!("a dict key must be a string, not {other}"))),
            };
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after a dict key"));
            }
            self.i += 1;
            let v = self.value()?;
            m.insert(key, v);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn seq(&mut self, close: u8) -> Result<Value, String> {
        self.i += 1;
        let mut out = vec![];
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(Value::Array(out));
            }
            out.push(self.value()?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err(self.err(&format!("expected ',' or '{}'", close as char))),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        // Work on chars so that non-ASCII values survive unchanged.
        let rest = &self.text[self.i..];
        let mut chars = rest.char_indices();
        while let Some((off, c)) = chars.next() {
            if c as u32 == quote as u32 {
                self.i += off + 1;
                return Ok(out);
            }
            if c == '\\' {
                let Some((_, e)) = chars.next() else { break };
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    other => other, // \\, \', \" and anything else: the character itself
                });
            } else {
                out.push(c);
            }
        }
        Err(self.err("unterminated string"))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'_'
            )
        {
            self.i += 1;
        }
        let t: String = self.text[start..self.i]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        if let Ok(n) = t.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        t.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| self.err(&format!("{t:?} is not a number")))
    }

    fn word(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        match &self.text[start..self.i] {
            "True" | "true" => Ok(Value::Bool(true)),
            "False" | "false" => Ok(Value::Bool(false)),
            "None" | "null" => Ok(Value::Null),
            "" => Err(self.err("unexpected character")),
            w => Err(self.err(&format!("{w:?} is not a literal (quote strings: '{w}')"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_and_json_dicts() {
        assert_eq!(parse("{'K':'V'}").unwrap(), json!({"K": "V"}));
        assert_eq!(parse(r#"{"K": "V"}"#).unwrap(), json!({"K": "V"}));
        assert_eq!(
            parse("{'a': 1, 'b': [True, None, 2.5,], \"c\": {'d': 'x'},}").unwrap(),
            json!({"a": 1, "b": [true, null, 2.5], "c": {"d": "x"}})
        );
        assert_eq!(
            parse(r"{'q': 'it\'s', 'n': 'é'}").unwrap(),
            json!({"q": "it's", "n": "é"})
        );
        assert_eq!(parse("('a', 'b')").unwrap(), json!(["a", "b"]));
    }

    #[test]
    fn bad_literals_say_where() {
        let e = parse("{'K': V}").unwrap_err();
        assert!(e.contains("\"V\" is not a literal"), "{e}");
        assert!(parse("{'K': 'V'").unwrap_err().contains("expected"));
        assert!(
            parse("{'K': 'V'} x")
                .unwrap_err()
                .contains("after the value")
        );
        assert!(parse("'abc").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn secret_data_is_string_to_string() {
        let m = parse_str_dict("{'USER': 'me', 'PORT': 5432}").unwrap();
        assert_eq!(Value::Object(m), json!({"USER": "me", "PORT": "5432"}));
        assert!(
            parse_str_dict("['a']")
                .unwrap_err()
                .contains("expected a dict")
        );
        assert!(
            parse_str_dict("{'a': {'b': 'c'}}")
                .unwrap_err()
                .contains("must be a string")
        );
    }

    #[test]
    fn entrypoints() {
        assert_eq!(
            parse_str_list("['python', 'main.py']").unwrap(),
            ["python", "main.py"]
        );
        assert_eq!(
            parse_str_list("[\"sh\", \"-c\", \"echo hi\"]").unwrap(),
            ["sh", "-c", "echo hi"]
        );
        assert_eq!(
            parse_str_list("python main.py").unwrap(),
            ["python", "main.py"]
        );
        assert!(parse_str_list("[1]").is_err());
        assert!(parse_str_list("  ").is_err());
    }
}
