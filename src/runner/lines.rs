//! Reading an agent's output: bounded lines and the stdout progress protocol.
//!
//! Memory stays bounded whatever the agent prints: a line longer than the limit is cut, the rest
//! of it skipped, and the line buffer is reused, so reading allocates nothing per line.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::contract::Progress;
use crate::retry::RetryAsk;

/// Reads lines of at most `max` bytes from an async reader.
pub struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    bytes: u64,
}

/// One line, without its newline.
pub struct Line<'a> {
    /// The (possibly cut) content.
    pub bytes: &'a [u8],
    /// Whether the line was longer than the limit and cut.
    pub truncated: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader keeping at most `max` bytes of each line.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, inner),
            line: Vec::with_capacity(max.min(4096)),
            max,
            bytes: 0,
        }
    }

    /// Total bytes read so far, newlines included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next line, or `None` at end of stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        self.line.clear();
        let mut truncated = false;
        let mut saw_any = false;
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(saw_any.then_some(Line {
                    bytes: &self.line,
                    truncated,
                }));
            }
            saw_any = true;
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max - self.line.len();
            if part.len() > room {
                truncated = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let consumed = newline.map_or(chunk.len(), |i| i + 1);
            self.bytes += consumed as u64;
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(Some(Line {
                    bytes: &self.line,
                    truncated,
                }));
            }
        }
    }
}

/// The agent's ask for a retry: `{"retry": {"after_s": 30, "reason": "rate limited"}}`, both
/// fields optional (`{"retry": {}}`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryLine {
    retry: RetryFields,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFields {
    #[serde(default)]
    after_s: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
}

/// Parses a line as the agent's ask for a retry; `None` for any other line. Only the final
/// stdout line of a failed run counts (the runner keeps it); `after_s` below 0 reads as 0.
pub fn parse_retry(line: &[u8]) -> Option<RetryAsk> {
    let text = std::str::from_utf8(line).ok()?.trim();
    if !text.starts_with('{') {
        return None;
    }
    let RetryLine { retry } = serde_json::from_str(text).ok()?;
    Some(RetryAsk {
        after: retry
            .after_s
            .filter(|s| s.is_finite())
            .map(|s| std::time::Duration::from_secs_f64(s.clamp(0.0, 1e9))),
        reason: retry.reason,
    })
}

/// Parses one stdout line by the progress protocol; `None` for a blank line and for the
/// agent's ask for a retry ([`parse_retry`]), which is no progress.
///
/// A JSON object with any of `stage`, `message`, `percent` is taken field by field; any other
/// line becomes the `message` of an event. `percent` is clamped to 0-100.
pub fn parse_progress(line: &[u8], truncated: bool) -> Option<Progress> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if text.trim().is_empty() || (!truncated && parse_retry(line).is_some()) {
        return None;
    }
    if !truncated
        && text.trim_start().starts_with('{')
        && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text)
        && ["stage", "message", "percent"]
            .iter()
            .any(|k| obj.contains_key(*k))
    {
        return Some(Progress {
            stage: obj.get("stage").and_then(as_text),
            message: obj.get("message").and_then(as_text),
            percent: obj
                .get("percent")
                .and_then(Value::as_f64)
                .map(|p| p.clamp(0.0, 100.0)),
        });
    }
    let message = if truncated {
        format!("{text} [line truncated]")
    } else {
        text.to_owned()
    };
    Some(Progress {
        stage: None,
        message: Some(message),
        percent: None,
    })
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_object_with_progress_keys_is_taken_field_by_field() {
        let p = parse_progress(
            br#"{"stage":"fetch","message":"12/30","percent":40}"#,
            false,
        )
        .unwrap();
        assert_eq!(p.stage.as_deref(), Some("fetch"));
        assert_eq!(p.message.as_deref(), Some("12/30"));
        assert_eq!(p.percent, Some(40.0));
    }

    #[test]
    fn any_other_line_becomes_the_message() {
        let p = parse_progress(b"loading model", false).unwrap();
        assert_eq!(p.message.as_deref(), Some("loading model"));
        assert_eq!(p.stage, None);
        let p = parse_progress(br#"{"other":1}"#, false).unwrap();
        assert_eq!(p.message.as_deref(), Some(r#"{"other":1}"#));
    }

    #[test]
    fn a_retry_line_is_an_ask_not_progress() {
        let ask = parse_retry(br#"{"retry": {"after_s": 2.5, "reason": "429"}}"#).unwrap();
        assert_eq!(ask.after, Some(std::time::Duration::from_millis(2500)));
        assert_eq!(ask.reason.as_deref(), Some("429"));
        assert_eq!(
            parse_retry(br#"{"retry": {}}"#).unwrap(),
            RetryAsk::default()
        );
        assert!(parse_progress(br#"{"retry": {}}"#, false).is_none());
        // Anything else is no ask, and stays a progress line.
        for line in [
            &br#"{"retry": {"after": 3}}"#[..],
            br#"{"retry": 3}"#,
            br#"{"retry": {}, "stage": "x"}"#,
            b"retry later",
        ] {
            assert!(parse_retry(line).is_none(), "{line:?}");
            assert!(parse_progress(line, false).is_some(), "{line:?}");
        }
        assert_eq!(
            parse_retry(br#"{"retry": {"after_s": -4}}"#).unwrap().after,
            Some(std::time::Duration::ZERO)
        );
    }

    #[test]
    fn percent_is_clamped_and_blank_lines_are_skipped() {
        assert_eq!(
            parse_progress(br#"{"percent":140}"#, false)
                .unwrap()
                .percent,
            Some(100.0)
        );
        assert!(parse_progress(b"   ", false).is_none());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_skipped() {
        let input = format!("{}\nshort\n", "x".repeat(10_000));
        let mut reader = LineReader::new(input.as_bytes(), 300);
        let first = reader.next_line().await.unwrap().unwrap();
        assert_eq!(first.bytes.len(), 300);
        assert!(first.truncated);
        let second = reader.next_line().await.unwrap().unwrap();
        assert_eq!(second.bytes, b"short");
        assert!(!second.truncated);
        assert!(reader.next_line().await.unwrap().is_none());
        assert_eq!(reader.bytes_read(), input.len() as u64);
    }

    #[tokio::test]
    async fn a_last_line_without_newline_is_still_read() {
        let mut reader = LineReader::new(&b"a\nb"[..], 300);
        assert_eq!(reader.next_line().await.unwrap().unwrap().bytes, b"a");
        assert_eq!(reader.next_line().await.unwrap().unwrap().bytes, b"b");
        assert!(reader.next_line().await.unwrap().is_none());
    }
}
