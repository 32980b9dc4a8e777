//! Rendering a campaign action for one submission (minijinja; contract §3 "Templates"): the
//! workers render every message with it, and the API previews campaigns with the same code.

use crate::{Action, Channel};
use minijinja::Environment;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// (campaign, version, channel, step): one action of one campaign version.
type ActionKey = (Uuid, i32, Channel, u16);

/// Compiled templates, once per (campaign, version, channel, step). Bounded: emptied when it
/// grows past `MAX_ENTRIES` (campaign versions are few; this only guards against churn).
#[derive(Default)]
pub struct TemplateCache {
    inner: Mutex<HashMap<ActionKey, Arc<Environment<'static>>>>,
    links: Option<Arc<QrLinks>>,
}

/// Where `qr_url` points: the API's public address and the key its links are sealed with
/// (`QUIZFLOW_LINK_KEY`; the API needs the same). Without a key, `qr_url` fails the message
/// with a clear reason instead of sealing under a key nobody configured.
#[derive(Clone)]
pub struct QrLinks {
    pub public_url: String,
    pub key: Option<Vec<u8>>,
}

impl std::fmt::Debug for QrLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrLinks")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

fn template_error(e: String) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e)
}

/// The QR functions every template has: `qr_png(v)` (a `data:` URI of the PNG), `qr_img(v)`
/// (an `<img>` with it, inline in an HTML e-mail) and, where a public URL is configured,
/// `qr_url(v)` (a signed, link-safe address of the PNG on the API: WhatsApp media).
fn add_qr_functions(env: &mut Environment<'static>, links: Option<Arc<QrLinks>>) {
    env.add_function("qr_png", |v: minijinja::Value| {
        crate::qr::data_uri(&v.to_string()).map_err(template_error)
    });
    env.add_function("qr_img", |v: minijinja::Value| {
        let uri = crate::qr::data_uri(&v.to_string()).map_err(template_error)?;
        Ok(minijinja::Value::from_safe_string(format!(
            "<img src=\"{uri}\" alt=\"QR code\" width=\"240\" height=\"240\">"
        )))
    });
    env.add_function(
        "qr_url",
        move |state: &minijinja::State, v: minijinja::Value| {
            let Some(l) = &links else {
                return Err(template_error(
                    "qr_url needs QUIZFLOW_PUBLIC_URL (where the API serves the image)".into(),
                ));
            };
            let Some(key) = &l.key else {
                return Err(template_error(
                    "qr_url needs QUIZFLOW_LINK_KEY (the key its links are sealed with; the API needs the same)"
                        .into(),
                ));
            };
            // The link names its submission (sealed): once the person is erased it is dead.
            let submission_id = state
                .lookup("submission_id")
                .and_then(|s| s.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()));
            let link = crate::qr::Link {
                value: v.to_string(),
                submission_id,
                expires_at: chrono::Utc::now() + crate::qr::LINK_TTL,
            };
            let token = crate::qr::seal(key, &link)
                .ok_or_else(|| template_error("qr_url: the value is too long for a QR code".into()))?;
            Ok(format!(
                "{}/v1/qr/{token}.png",
                l.public_url.trim_end_matches('/')
            ))
        },
    );
}

/// `unsubscribe_url()`: the recipient's one-click unsubscribe link (contract §3.2), made per
/// message by the worker (it needs the recipient's hash) and handed in the context.
fn add_unsubscribe_function(env: &mut Environment<'static>) {
    env.add_function("unsubscribe_url", |state: &minijinja::State| {
        // Safe: quizflow's own URL (the public address and a base64url token), which an
        // HTML body must carry unescaped for the link to work.
        state
            .lookup("__unsubscribe_url")
            .and_then(|v| v.as_str().map(|s| minijinja::Value::from_safe_string(s.to_owned())))
            .ok_or_else(|| {
                template_error(
                    "unsubscribe_url needs QUIZFLOW_PUBLIC_URL (where the API serves the link) and a recipient"
                        .into(),
                )
            })
    });
}

/// The plain-text part of an HTML e-mail: tags out, line breaks where blocks end, the common
/// entities decoded, blank runs collapsed.
pub fn plain_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            rest = &rest[open..];
            break;
        };
        let tag = rest[open + 1..open + close].trim().to_ascii_lowercase();
        let name = tag.trim_start_matches('/');
        if ["br", "p", "div", "tr", "li", "h1", "h2", "h3", "table"]
            .iter()
            .any(|t| name == *t || name.starts_with(&format!("{t} ")))
        {
            out.push('\n');
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    let lines: Vec<&str> = decoded.lines().map(str::trim).collect();
    let mut text = String::with_capacity(decoded.len());
    let mut blank = false;
    for l in lines {
        if l.is_empty() {
            blank = !text.is_empty();
            continue;
        }
        if blank {
            text.push_str("\n\n");
        } else if !text.is_empty() {
            text.push('\n');
        }
        blank = false;
        text.push_str(l);
    }
    text
}

const MAX_ENTRIES: usize = 10_000;

impl TemplateCache {
    /// A cache whose templates can call `qr_url` (signed links to the API's QR images).
    pub fn with_links(links: Option<QrLinks>) -> Self {
        Self {
            inner: Mutex::default(),
            links: links.map(Arc::new),
        }
    }

    /// The compiled `body`, `subject` and `image` templates of `action`, the `step`-th
    /// action of its channel in that campaign version.
    pub fn get(
        &self,
        campaign: Uuid,
        version: i32,
        step: u16,
        action: &Action,
    ) -> Result<Arc<Environment<'static>>, String> {
        let key = (campaign, version, action.channel, step);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(env) = map.get(&key) {
            return Ok(env.clone());
        }
        let mut env = crate::template::environment();
        add_qr_functions(&mut env, self.links.clone());
        add_unsubscribe_function(&mut env);
        // E-mail bodies are HTML: submission data is escaped in them (contract §4), so a name
        // such as `<script>` arrives as text. Subjects and other channels are plain text.
        if action.channel == Channel::Email {
            env.set_auto_escape_callback(|name| {
                if name == "body" {
                    minijinja::AutoEscape::Html
                } else {
                    minijinja::AutoEscape::None
                }
            });
        }
        if let Some(t) = &action.template {
            env.add_template_owned("body", t.clone())
                .map_err(|e| format!("template: {e}"))?;
        }
        if let Some(t) = &action.subject {
            env.add_template_owned("subject", t.clone())
                .map_err(|e| format!("subject template: {e}"))?;
        }
        if let Some(t) = &action.image {
            env.add_template_owned("image", t.clone())
                .map_err(|e| format!("image template: {e}"))?;
        }
        if let Some(w) = &action.whatsapp_template {
            for (i, t) in w.body.iter().enumerate() {
                env.add_template_owned(format!("wa_body_{i}"), t.clone())
                    .map_err(|e| format!("whatsapp_template.body[{i}]: {e}"))?;
            }
            if let Some(t) = &w.header_image {
                env.add_template_owned("wa_header_image", t.clone())
                    .map_err(|e| format!("whatsapp_template.header_image: {e}"))?;
            }
        }
        // Opted in: a variable the lead lacks fails the message instead of rendering empty.
        if action.strict {
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let env = Arc::new(env);
        map.insert(key, env.clone());
        Ok(env)
    }
}

/// A WhatsApp template message as sent: the approved name and language, the body's
/// parameters in order, and the header image's URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateMessage {
    pub name: String,
    pub language: String,
    pub body: Vec<String>,
    pub header_image: Option<String>,
}

/// Renders a compiled template of `env`, if it has one by that name.
pub fn render_compiled(
    env: &Environment<'_>,
    name: &str,
    ctx: &minijinja::Value,
) -> Result<Option<String>, String> {
    match env.get_template(name) {
        Ok(t) => t.render(ctx).map(Some).map_err(|e| format!("{name}: {e}")),
        Err(_) => Ok(None),
    }
}

/// An action's WhatsApp template with its parameters rendered for one lead. A parameter that
/// renders empty fails the message (Meta refuses it); when every parameter does, `None`: the
/// message is empty and ends `skipped` (`empty_render`).
pub fn whatsapp_template(
    env: &Environment<'_>,
    action: &Action,
    ctx: &minijinja::Value,
) -> Result<Option<TemplateMessage>, String> {
    let Some(w) = &action.whatsapp_template else {
        return Ok(None);
    };
    let mut body = Vec::with_capacity(w.body.len());
    for i in 0..w.body.len() {
        let text = render_compiled(env, &format!("wa_body_{i}"), ctx)?.unwrap_or_default();
        body.push(text.trim().to_owned());
    }
    if !body.is_empty() && body.iter().all(String::is_empty) {
        // Every variable missing: nothing to send (`empty_render`).
        return Ok(None);
    }
    if let Some(i) = body.iter().position(String::is_empty) {
        return Err(format!(
            "whatsapp_template.body[{i}] rendered empty (WhatsApp refuses empty parameters)"
        ));
    }
    let header_image = render_compiled(env, "wa_header_image", ctx)?
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty());
    if w.header_image.is_some() && header_image.is_none() {
        return Err("whatsapp_template.header_image rendered empty".to_owned());
    }
    Ok(Some(TemplateMessage {
        name: w.name.clone(),
        language: w.language.clone(),
        body,
        header_image,
    }))
}

/// `ctx` with the recipient's unsubscribe link, which `unsubscribe_url()` renders.
pub fn with_unsubscribe(ctx: minijinja::Value, url: Option<&str>) -> minijinja::Value {
    match url {
        Some(url) => minijinja::context! { __unsubscribe_url => url, ..ctx },
        None => ctx,
    }
}

/// The template context (one builder for messages and schedules: `crate::template`).
pub use crate::template::context;

/// Renders one template; an error is a permanent failure (the template will not change by retrying).
pub fn render(template: &str, ctx: &minijinja::Value) -> Result<String, String> {
    let env = crate::template::environment();
    env.render_str(template, ctx)
        .map_err(|e| format!("template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_bodies_escape_submission_data_and_subjects_do_not() {
        let action: Action = serde_json::from_value(json!({"channel": "email",
            "subject": "Hi {{ respondent.name }}", "template": "<p>Hi {{ respondent.name }}</p>"}))
        .expect("action");
        let cache = TemplateCache::default();
        let env = cache.get(Uuid::nil(), 1, 0, &action).expect("compiles");
        let ctx = minijinja::Value::from(minijinja::value::Serde(
            json!({"respondent": {"name": "<script>alert(1)</script>"}}),
        ));
        let body = render_compiled(&env, "body", &ctx)
            .expect("renders")
            .expect("body");
        assert_eq!(body, "<p>Hi &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p>");
        let subject = render_compiled(&env, "subject", &ctx)
            .expect("renders")
            .expect("subject");
        assert_eq!(subject, "Hi <script>alert(1)</script>");
        let sms: Action = serde_json::from_value(
            json!({"channel": "sms", "template": "Hi {{ respondent.name }}"}),
        )
        .expect("action");
        let env = cache.get(Uuid::nil(), 1, 0, &sms).expect("compiles");
        let body = render_compiled(&env, "body", &ctx)
            .expect("renders")
            .expect("body");
        assert_eq!(body, "Hi <script>alert(1)</script>", "SMS is plain text");
    }

    #[test]
    fn the_text_part_of_an_html_mail() {
        assert_eq!(
            plain_text("<p>Olá <b>Ana</b></p><p>Score&nbsp;72 &amp; more<br>bye</p>"),
            "Olá Ana\n\nScore 72 & more\nbye"
        );
        assert_eq!(plain_text("plain"), "plain");
    }

    #[test]
    fn renders_the_spec_example() {
        let stored = json!({"respondent": {"name": "Ana"}, "submission_id": "643cab86-35be-57bd-ae61-a49ba8eaed7a", "score": 72.0,
            "answers": [{"question": "q1", "value": "b"}]});
        let ctx = context(&stored, "c1", "Promo");
        assert_eq!(
            render(
                "Olá {{ respondent.name }}, seu cupom: {{ submission_id[:8] }} ({{ answers.q1 }})",
                &ctx
            )
            .expect("renders"),
            "Olá Ana, seu cupom: 643cab86 (b)"
        );
        assert!(render("{{ 1 / 0 }}", &ctx).is_err());
    }
}
