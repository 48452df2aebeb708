//! The credential lifecycle page at `/` on the admin listener: every credential on two axes —
//! remaining lifetime as the bar's length, scope breadth as its height — with flags for what
//! deserves a look (broad, long-lived, unused, failing). Self-contained HTML: no script, no
//! external resource, readable offline and without JavaScript, refreshed every 15 s by the
//! browser. Built from the `/credentials` document, so it shows nothing that does not.

use std::fmt::Write as _;

use serde_json::Value;

/// A scope at least this broad is flagged (e.g. one wildcard host, 3 methods, every path = 300).
const BROAD: u64 = 100;
/// A credential issued for longer than this is flagged long-lived.
const LONG_LIVED_SECONDS: u64 = 60 * 60;

/// The page for a `/credentials` document, and the refusals since start by code.
pub(crate) fn render(doc: &Value, refusals: &[(String, u64)]) -> String {
    let mut out = String::with_capacity(8 << 10);
    out.push_str(HEAD);
    let empty = Vec::new();
    let credentials = doc["credentials"].as_array().unwrap_or(&empty);
    let max_breadth = credentials
        .iter()
        .filter_map(|c| c["scope"]["breadth"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1);
    let _ = write!(
        out,
        "<h1>sidekey credentials</h1><p class=\"meta\">{} credential entries · bar length: \
         lifetime left · bar height: scope breadth · refreshed every 15 s</p>",
        credentials.len()
    );
    out.push_str("<table><thead><tr><th>credential</th><th>task</th><th>lifetime left · scope</th><th>uses 5 min / 1 h / all</th><th>scope</th><th>flags</th></tr></thead><tbody>");
    for c in credentials {
        row(&mut out, c, max_breadth);
    }
    out.push_str("</tbody></table>");
    out.push_str("<h2>Refusals since start, by code</h2>");
    if refusals.is_empty() {
        out.push_str("<p class=\"dim\">none</p>");
    } else {
        out.push_str("<table class=\"refusals\"><thead><tr><th>code</th><th>requests</th></tr></thead><tbody>");
        for (code, count) in refusals {
            let _ = write!(out, "<tr><td>{}</td><td>{count}</td></tr>", escape(code));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</body></html>\n");
    out
}

fn row(out: &mut String, c: &Value, max_breadth: u64) {
    let name = text(&c["name"]);
    let issuer = text(&c["issuer"]);
    let task = match c["task_id"].as_str() {
        Some(task) => escape(task),
        None if c["per_task"] == true => "<span class=\"dim\">one per task</span>".to_string(),
        None => "<span class=\"dim\">shared</span>".to_string(),
    };
    let breadth = c["scope"]["breadth"].as_u64().unwrap_or(0);
    let lifetime = c["lifetime_seconds"].as_u64();
    let left = c["seconds_left"].as_u64();
    let held = c["held"] == true;
    // Bar length: what is left of the credential's life; height: its breadth (4 to 40 px).
    let (width, label) = match (held, left, lifetime) {
        (true, Some(left), Some(life)) if life > 0 => (
            (left * 100 / life).min(100),
            format!("{} left of {}", duration(left), duration(life)),
        ),
        (true, Some(left), _) => (100, format!("{} left", duration(left))),
        _ => (0, "not held".to_string()),
    };
    let height = 4 + breadth * 36 / max_breadth;
    let mut flags = Vec::new();
    if breadth >= BROAD || c["scope"]["wildcard_hosts"] == true || c["scope"]["any_method"] == true
    {
        flags.push(("broad", "broad scope"));
    }
    if lifetime.is_some_and(|l| l > LONG_LIVED_SECONDS) {
        flags.push(("long", "long-lived"));
    }
    if held && c["uses_1h"].as_u64() == Some(0) {
        flags.push(("unused", "unused for an hour"));
    }
    if !c["last_error"].is_null() {
        flags.push(("failing", "failing"));
    }
    let routes: Vec<String> = c["scope"]["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    format!(
                        "{} <span class=\"dim\">{} {} {}</span>",
                        text(&r["route"]),
                        list(&r["methods"]),
                        list(&r["hosts"]),
                        list(&r["paths"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = write!(
        out,
        "<tr class=\"{}\"><td><b>{name}</b><br><span class=\"dim\">{issuer}</span></td><td>{task}</td>\
         <td><div class=\"track\"><div class=\"bar\" style=\"width:{width}%;height:{height}px\"></div></div>\
         <span class=\"dim\">{label} · breadth {breadth}</span></td>\
         <td>{} / {} / {}</td><td>{}</td><td>{}</td></tr>",
        if flags.is_empty() { "ok" } else { "flagged" },
        c["uses_5m"].as_u64().unwrap_or(0),
        c["uses_1h"].as_u64().unwrap_or(0),
        c["uses"].as_u64().unwrap_or(0),
        if routes.is_empty() {
            "<span class=\"dim\">no route uses it</span>".to_string()
        } else {
            routes.join("<br>")
        },
        flags
            .iter()
            .map(|(class, label)| format!("<span class=\"flag {class}\">{label}</span>"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let Some(error) = c["last_error"].as_str() {
        let _ = write!(
            out,
            "<tr class=\"error\"><td></td><td colspan=\"5\">last error: {}</td></tr>",
            escape(error)
        );
    }
}

fn text(v: &Value) -> String {
    escape(v.as_str().unwrap_or(""))
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => escape(s),
                    other => escape(&other.to_string()),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// HTML text: task IDs and error messages come from outside (grants, issuers).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"15\"><title>sidekey credentials</title><style>\
body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 4px}.refusals{width:auto}\
.meta,.dim{color:#777}table{border-collapse:collapse;width:100%}th,td{text-align:left;\
padding:6px 8px;border-bottom:1px solid #eee;vertical-align:middle}th{font-weight:600}\
.track{width:260px;background:#f1f1f1;display:flex;align-items:center;min-height:40px}\
.bar{background:#2b7bba}.flagged .bar{background:#d9822b}.flag{display:inline-block;\
padding:1px 6px;border-radius:8px;font-size:12px;margin:1px;background:#eee}\
.flag.broad{background:#fde2c8}.flag.long{background:#f8d0d0}.flag.unused{background:#e0e0f8}\
.flag.failing{background:#f4b4b4}.error td{color:#a00}</style></head><body>";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_bars_and_escaping() {
        let doc = json!({"credentials": [
            {"name": "narrow", "issuer": "local", "held": true, "lifetime_seconds": 300,
             "seconds_left": 150, "uses": 3, "uses_5m": 1, "uses_1h": 3, "last_error": null,
             "scope": {"breadth": 1, "routes": [{"route": "api", "methods": ["GET"],
             "hosts": ["api.example.com"], "paths": ["/v1/items"]}]}},
            {"name": "wide", "issuer": "vault", "held": true, "lifetime_seconds": 86400,
             "seconds_left": 86000, "uses": 0, "uses_5m": 0, "uses_1h": 0,
             "last_error": "issuer refused (403)", "task_id": "<script>",
             "scope": {"breadth": 990, "wildcard_hosts": true, "routes": []}},
        ]});
        let html = render(
            &doc,
            &[
                ("host_not_allowed".into(), 7),
                ("path_not_allowed".into(), 2),
            ],
        );
        assert!(html.contains("<td>host_not_allowed</td><td>7</td>"));
        assert!(render(&doc, &[]).contains("<p class=\"dim\">none</p>"));
        assert!(
            html.contains("width:50%;height:4px"),
            "half its life left, narrow"
        );
        assert!(
            html.contains("width:99%;height:40px"),
            "most of its day left, the broadest"
        );
        for flag in ["broad scope", "long-lived", "unused for an hour", "failing"] {
            assert_eq!(
                html.matches(&format!(">{flag}</span>")).count(),
                1,
                "{flag}"
            );
        }
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("2m30s left of 5m00s"));
        assert!(!html.contains("<script"), "no script at all");
    }
}
