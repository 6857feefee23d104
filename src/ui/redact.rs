//! Hides secrets in what the dashboard shows of a job's request: any value under a key that
//! names a secret (`password`, `token`, `api_key`, `secret`, …), at any depth, becomes
//! `"[redacted]"`. The config's own secrets never reach a page; a trigger's `params` may carry
//! some, and the page is for people who need not see them. A key is matched by substring, so
//! the rule errs on the side of hiding (`tokens_used` is hidden too).

use serde_json::Value;

/// The text that replaces a secret.
pub(super) const REDACTED: &str = "[redacted]";

/// Parts of a key that mark its value secret, compared case-insensitively with `-` as `_`.
const SECRET_WORDS: [&str; 9] = [
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "credential",
    "authorization",
    "private_key",
];

/// Whether a value under `key` is secret.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// `value` with every secret replaced by [`REDACTED`].
pub(super) fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_secret(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_the_rest_is_kept() {
        let params = json!({
            "title": "Q3",
            "API-Key": "k1",
            "nested": {"db_password": "p", "rows": [{"access_token": "t", "n": 1}]},
            "tokens_used": 3
        });
        assert_eq!(
            redact(&params),
            json!({
                "title": "Q3",
                "API-Key": REDACTED,
                "nested": {"db_password": REDACTED, "rows": [{"access_token": REDACTED, "n": 1}]},
                "tokens_used": REDACTED
            })
        );
    }
}
