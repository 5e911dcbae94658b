//! The audit page: the records the viewer may read (the API's `audit list`, with the same
//! scope), filtered by actor, action, machine, session and time, a page at a time; and the
//! same selection as a download, CSV or JSON lines, for a spreadsheet or a SIEM.

use axum::{
    extract::{Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use fernwart_api::{AuditQuery, AuditRecord};
use maud::{html, Markup};

use super::{
    i18n::{Lang, Msg},
    pages, Viewer,
};
use crate::{
    api::{self, audit::PAGE, ApiError, Authed},
    App,
};

/// The most records one download holds.
const EXPORT_MAX: usize = 100_000;

/// The filters as the form holds them (times as `datetime-local`, read as UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub user: String,
    pub kind: String,
    pub machine: String,
    pub session: String,
    pub since: String,
    pub until: String,
    pub after: Option<i64>,
}

impl Filters {
    fn of(v: &Viewer) -> Self {
        let get = |k: &str| v.query.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
        Self {
            user: get("user"),
            kind: get("kind"),
            machine: get("machine"),
            session: get("session"),
            since: get("since"),
            until: get("until"),
            after: v.query.get("after").and_then(|a| a.parse().ok()),
        }
    }

    /// The API's query; a malformed time is refused with a reason.
    fn query(&self, after: Option<i64>) -> Result<AuditQuery, String> {
        let opt = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let time = |s: &str| -> Result<Option<String>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            let full = if s.len() == 16 { format!("{s}:00Z") } else { format!("{s}Z") };
            crate::util::parse_rfc3339(&full)
                .map(|_| Some(full))
                .ok_or_else(|| format!("{s:?} is not a date and time"))
        };
        Ok(AuditQuery {
            since: time(&self.since)?,
            until: time(&self.until)?,
            user: opt(&self.user),
            org: None,
            machine: opt(&self.machine),
            session: opt(&self.session),
            kind: opt(&self.kind),
            after,
            limit: Some(PAGE),
        })
    }

    /// The filters as a query string (for the export links and the next page).
    fn encoded(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("user", &self.user),
            ("kind", &self.kind),
            ("machine", &self.machine),
            ("session", &self.session),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

fn authed(v: &Viewer) -> Authed {
    Authed { caller: v.a.caller.clone(), token_hash: v.a.token_hash.clone() }
}

async fn page_of(app: &App, v: &Viewer, q: AuditQuery) -> Result<Vec<AuditRecord>, ApiError> {
    api::audit::list(State(app.clone()), authed(v), Query(q)).await.map(|Json(list)| list)
}

pub async fn audit_page(State(app): State<App>, v: Viewer) -> Response {
    let f = Filters::of(&v);
    let q = match f.query(f.after) {
        Ok(q) => q,
        Err(why) => return v.error(StatusCode::BAD_REQUEST, Msg::ErrorRefused, Some(&why)),
    };
    let records = match page_of(&app, &v, q).await {
        Ok(r) => r,
        Err(e) => return v.api_error(&e),
    };
    let next = (records.len() == PAGE as usize).then(|| records.last().map(|r| r.id)).flatten();
    let body = audit_body(v.ui.lang, &f, &records, next);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::AuditTitle, body))
}

fn audit_body(lang: Lang, f: &Filters, records: &[AuditRecord], next: Option<i64>) -> Markup {
    let t = |m: Msg| m.text(lang);
    let qs = f.encoded();
    let sep = if qs.is_empty() { "" } else { "&" };
    html! {
        h1 { (t(Msg::AuditTitle)) }
        form.filters #audit-filter method="get" action="/audit" {
            div.fields {
                div { label for="user" { (t(Msg::FilterActor)) }
                      input #user name="user" type="text" value=(f.user) maxlength="64" autocapitalize="none" spellcheck="false"; }
                div { label for="kind" { (t(Msg::FilterAction)) }
                      input #kind name="kind" type="text" value=(f.kind) maxlength="64" placeholder="session.approve" autocapitalize="none" spellcheck="false"; }
                div { label for="machine" { (t(Msg::ColMachine)) }
                      input #machine name="machine" type="text" value=(f.machine) maxlength="64" autocapitalize="none" spellcheck="false"; }
                div { label for="session" { (t(Msg::ColSession)) }
                      input #session name="session" type="text" value=(f.session) maxlength="64" autocapitalize="none" spellcheck="false"; }
                div { label for="since" { (t(Msg::FilterSince)) }
                      input #since name="since" type="datetime-local" value=(f.since); }
                div { label for="until" { (t(Msg::FilterUntil)) }
                      input #until name="until" type="datetime-local" value=(f.until); }
            }
            button type="submit" { (t(Msg::Filter)) }
        }
        p.exports {
            (t(Msg::Export)) " "
            a.export-csv href={ "/audit/export.csv" @if !qs.is_empty() { "?" (qs) } } download { "CSV" }
            " · "
            a.export-jsonl href={ "/audit/export.jsonl" @if !qs.is_empty() { "?" (qs) } } download { (t(Msg::JsonLines)) }
        }
        @if records.is_empty() {
            p.empty { (t(Msg::NoRecords)) }
        } @else {
            div.scroll { table.audit {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { (t(Msg::ColTime)) }
                    th scope="col" { (t(Msg::FilterActor)) }
                    th scope="col" { (t(Msg::FilterAction)) }
                    th scope="col" { (t(Msg::ColObject)) }
                    th scope="col" { (t(Msg::ColSource)) }
                    th scope="col" { (t(Msg::ColDetails)) }
                } }
                tbody {
                    @for r in records {
                        tr.record data-action=(r.action) data-id=(r.id) {
                            td.num { (r.id) }
                            td { time datetime=(r.time) { (r.time) } }
                            td { (r.actor) }
                            td { code { (r.action) } }
                            td { (r.target) }
                            td { (r.source) }
                            td.details { code { (r.details.to_string()) } }
                        }
                    }
                }
            } }
            @if let Some(after) = next {
                p { a rel="next" href={ "/audit?" (qs) (sep) "after=" (after) } { (t(Msg::NextPage)) } }
            }
        }
    }
}

/// `GET /audit/export.csv` and `/audit/export.jsonl`: every record of the selection.
pub async fn export_csv(State(app): State<App>, v: Viewer) -> Response {
    export(app, v, Format::Csv).await
}

pub async fn export_jsonl(State(app): State<App>, v: Viewer) -> Response {
    export(app, v, Format::JsonLines).await
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    JsonLines,
}

async fn export(app: App, v: Viewer, format: Format) -> Response {
    let f = Filters::of(&v);
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let q = match f.query(after) {
            Ok(q) => q,
            Err(why) => return v.error(StatusCode::BAD_REQUEST, Msg::ErrorRefused, Some(&why)),
        };
        let page = match page_of(&app, &v, q).await {
            Ok(p) => p,
            Err(e) => return v.api_error(&e),
        };
        let full = page.len() == PAGE as usize;
        after = page.last().map(|r| r.id);
        all.extend(page);
        if !full || all.len() >= EXPORT_MAX {
            break;
        }
    }
    let (body, kind, file) = match format {
        Format::Csv => (csv(&all), "text/csv; charset=utf-8", "fernwart-audit.csv"),
        Format::JsonLines => (json_lines(&all), "application/x-ndjson", "fernwart-audit.jsonl"),
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(d) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    res
}

/// RFC 4180, one header line; a cell that a spreadsheet would take for a formula starts with
/// an apostrophe (OWASP: CSV injection).
pub fn csv(records: &[AuditRecord]) -> String {
    let mut out = String::from("id,time,actor,org,action,target,source,details\r\n");
    for r in records {
        let details = r.details.to_string();
        let cells = [
            r.id.to_string(),
            r.time.clone(),
            r.actor.clone(),
            r.org.clone().unwrap_or_default(),
            r.action.clone(),
            r.target.clone(),
            r.source.clone(),
            details,
        ];
        let line: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn cell(c: &str) -> String {
    let guarded = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{c}")
    } else {
        c.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// One JSON object a line, as `fernwart audit list --json` prints them.
pub fn json_lines(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        // A record of plain fields serializes without fail.
        out.push_str(&serde_json::to_string(r).unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str) -> AuditRecord {
        AuditRecord {
            id: 3,
            time: "2026-01-01T00:00:00.000Z".into(),
            actor: "op1".into(),
            org: None,
            action: "session.approve".into(),
            target: target.into(),
            source: "127.0.0.1".into(),
            details: serde_json::json!({"reason": "a, \"b\""}),
        }
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let out = csv(&[record("=HYPERLINK(\"x\")")]);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("id,time,actor,org,action,target,source,details"));
        let line = lines.next().unwrap_or_default();
        assert!(line.starts_with("3,2026-01-01T00:00:00.000Z,op1,,session.approve,"), "{line}");
        assert!(line.contains(r#""'=HYPERLINK(""x"")""#), "{line}");
        assert!(line.ends_with(r#""{""reason"":""a, \""b\""""}""#), "{line}");
    }

    #[test]
    fn json_lines_are_one_record_each() {
        let out = json_lines(&[record("s1"), record("s2")]);
        let back: Vec<AuditRecord> =
            out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].target, "s2");
    }

    #[test]
    fn filters_become_the_apis_query() {
        let f =
            Filters { user: "op1".into(), since: "2026-01-01T10:00".into(), ..Default::default() };
        let q = f.query(Some(7)).unwrap();
        assert_eq!(q.user.as_deref(), Some("op1"));
        assert_eq!(q.since.as_deref(), Some("2026-01-01T10:00:00Z"));
        assert_eq!((q.after, q.machine), (Some(7), None));
        assert_eq!(f.encoded(), "user=op1&since=2026-01-01T10%3A00");
        assert!(Filters { until: "soon".into(), ..f }.query(None).is_err());
    }
}
