//! The console's handlers: thin; they read the session and form, call the function the JSON
//! endpoint calls, and render a template (or redirect after a successful POST, so a reload does
//! not post twice).

use super::page::{Nav, PageError, html};
use super::policy_form::PolicyForm;
use super::session::{self, Posted, Signed, clear_cookie, read_fields, set_cookie};
use super::sign_in_csrf;
use super::time::{gpu, now_ms};
use super::views::{
    self, AttemptView, EventView, Input, QueueRow, errors_of, form_value, rejected_fields,
};
use crate::AppState;
use crate::auth::{Role, need};
use crate::error::AppError;
use crate::extract::QueryPairs;
use crate::routes::{budgets, policies, segments};
use askama::Template;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use retake_activities::ports::{Budget, SegmentQuery, StoredAttempt, StoredOutcome};
use retake_client::{Creator, ReviewFilter};
use retake_domain::contract::AttemptRecord;
use retake_domain::review::Phase;
use retake_domain::status::Status;
use retake_domain::{FieldError, ProjectId, RetryPolicy, SceneType, SegmentId, ValidationError};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use temporalio_client::NamespacedClient;

/// How long the segment page waits for the live `report` query: a retry whose worker is down
/// cannot answer, and the recorded history is still worth showing.
const LIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Rows per page of the review queue, unless `per_page` (1..=200) says otherwise.
const QUEUE_PAGE: i32 = 50;
const QUEUE_PAGE_MAX: i32 = 200;

/// The `{id}` of a page's path, as text (validated by the handler after the role check, as the
/// JSON API checks the role before the path).
pub(crate) struct PathText(String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathText(p))
            .map_err(|_| {
                ValidationError::single("id", "is not valid UTF-8 once percent-decoded").into()
            })
    }
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The message a redirect after a successful POST asks the page to show (`?done=`): a fixed set,
/// so a link cannot make the page say anything else.
fn flash(query: &QueryPairs) -> &'static str {
    let done = query.0.iter().rev().find(|(k, _)| k == "done");
    match done.map(|(_, v)| v.as_str()) {
        Some("accept") => "Accepted: the retry finishes with that attempt.",
        Some("reject") => "Rejected: the retry finishes without an attempt.",
        Some("retry_with") => {
            "Retrying with the new settings: attempts appear below as they finish."
        }
        Some("abort") => "Abort sent: the attempt in flight is cancelled.",
        Some("escalate") => "Escalate sent: the retry stops and goes to review.",
        Some("saved") => "Saved.",
        Some("signed-in") => "Signed in.",
        Some("empty") => "No other segment is awaiting a decision.",
        _ => "",
    }
}

/// The console's script (`console.js`, compiled into the binary): it keeps a running retry's
/// segment page up to date.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../static/console.js"),
    )
        .into_response()
}

pub(crate) async fn home() -> Response {
    see_other("/ui/review")
}

pub(crate) async fn not_found() -> PageError {
    PageError::App(AppError::NotFound(
        "there is no such console page".to_owned(),
    ))
}

// ---- sign-in and sign-out -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    nav: Nav,
    error: String,
}

/// The sign-in form, whose CSRF token is derived from the browser's sign-in cookie (reused while
/// live, so two tabs' forms both work; otherwise a new one): nothing is kept on the server.
pub(crate) async fn sign_in_form(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if session::from_headers(&headers, &s).is_some() {
        return see_other("/ui/review");
    }
    let csrf = &s.console.sign_in;
    let live = sign_in_csrf::cookie_of(&headers).and_then(|c| csrf.token_for(c));
    let (token, new_cookie) = match live {
        Some(token) => (token, None),
        None => {
            let cookie = csrf.issue();
            let token = csrf.token_for(&cookie).unwrap_or_default();
            (token, Some(cookie))
        }
    };
    let page = SignInPage {
        nav: Nav {
            role: None,
            csrf: token,
        },
        error: String::new(),
    };
    let mut r = html(StatusCode::OK, &page);
    if let Some(cookie) = new_cookie {
        set(&mut r, &sign_in_csrf::set_cookie(&cookie));
    }
    r
}

fn set(r: &mut Response, cookie: &str) {
    if let Ok(v) = header::HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Check the form's CSRF token against the sign-in cookie, then the token (constant time, as the
/// bearer check), and create a signed-in session with a fresh id.
pub(crate) async fn sign_in(
    State(s): State<AppState>,
    req: Request,
) -> Result<Response, PageError> {
    let headers = req.headers().clone();
    let fields = read_fields(req, &s).await?;
    let csrf = fields.get("csrf");
    if !s.console.sign_in.check(&headers, csrf) {
        return Err(PageError::Csrf);
    }
    let Some(who) = s
        .tokens
        .who_with(fields.get("token").as_bytes(), &headers)?
    else {
        let page = SignInPage {
            nav: Nav {
                role: None,
                csrf: csrf.to_owned(),
            },
            error: "That token is not known here.".to_owned(),
        };
        return Ok(html(StatusCode::UNAUTHORIZED, &page));
    };
    let signed = s.console.sessions.create(who);
    let mut r = see_other("/ui/review");
    set(&mut r, &set_cookie(&signed));
    Ok(r)
}

pub(crate) async fn sign_out(State(s): State<AppState>, posted: Posted<need::Viewer>) -> Response {
    s.console.sessions.remove(&posted.who.session.id);
    let mut r = see_other("/ui/sign-in");
    set(&mut r, &clear_cookie());
    r
}

// ---- the review queue -----------------------------------------------------------------------

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    nav: Nav,
    flash: &'static str,
    /// This page's own address, which `console.js` loads again to keep the table current.
    here: String,
    project: String,
    scene_type: String,
    rows: Vec<QueueRow>,
    /// How many await review in all (with these filters).
    total: u64,
    /// This is not the first page.
    later: bool,
    /// The link to the next page (empty on the last), and to the first.
    next: String,
    first: String,
}

fn optional<T>(
    query: &QueryPairs,
    name: &str,
    parse: impl Fn(&str) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    match query.0.iter().rev().find(|(k, _)| k == name) {
        Some((_, v)) if !v.trim().is_empty() => parse(v.trim()).map(Some).map_err(|e| {
            ValidationError::single(name, e.errors.first().map_or("", |f| f.message.as_str()))
        }),
        _ => Ok(None),
    }
}

/// The queue's `page` (visibility's opaque token, hex) and `per_page`.
fn paging(query: &QueryPairs) -> Result<(Vec<u8>, i32), ValidationError> {
    let token = optional(query, "page", |v| {
        hex::decode(v).map_err(|_| ValidationError::single("page", "is not a page of this queue"))
    })?
    .unwrap_or_default();
    let per_page = optional(query, "per_page", |v| {
        v.parse::<i32>()
            .ok()
            .filter(|n| (1..=QUEUE_PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ValidationError::single(
                    "per_page",
                    format!("must be a whole number from 1 to {QUEUE_PAGE_MAX}"),
                )
            })
    })?
    .unwrap_or(QUEUE_PAGE);
    Ok((token, per_page))
}

/// Segments awaiting review, a page at a time: Temporal's visibility lists the runs
/// (`RetryOutcome = awaiting_review`, newest start first) and counts them; the store gives each
/// its report, attempts and the time it was escalated, as the history endpoint reads them.
pub(crate) async fn queue(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let project = optional(&query, "project", |v| ProjectId::parse(v))?;
    let scene = optional(&query, "scene_type", |v| SceneType::parse(v))?;
    let (token, per_page) = paging(&query)?;
    let later = !token.is_empty();
    let filter = ReviewFilter {
        task_queue: &s.task_queue,
        project: project.as_ref(),
        scene_type: scene.as_ref(),
        retrying: false,
    };
    let current = token.clone();
    let (page, total) = tokio::try_join!(
        retake_client::awaiting_review(&s.temporal, &filter, per_page, token),
        retake_client::count_awaiting_review(&s.temporal, &filter),
    )
    .map_err(|e| match e {
        // A token Temporal does not take (edited, or from before a server reset): the server
        // answers InvalidArgument or, for one it cannot decode, Internal.
        retake_client::Error::Rejected(detail) | retake_client::Error::Internal(detail)
            if later =>
        {
            tracing::warn!(%detail, "review queue: a page token Temporal refused");
            ValidationError::single("page", "is not a page of this queue").into()
        }
        e => PageError::App(AppError::from(e)),
    })?;
    let now = now_ms();
    let mut policies: BTreeMap<String, RetryPolicy> = BTreeMap::new();
    let mut rows = Vec::with_capacity(page.runs.len());
    for run in page.runs {
        if !policies.contains_key(&run.scene_type) {
            let p = policy_of(&s, &run.scene_type).await?;
            policies.insert(run.scene_type.clone(), p);
        }
        let policy = &policies[&run.scene_type];
        let outcomes = s.store.outcomes(&run.segment_id).await?;
        let pending = outcomes
            .iter()
            .rev()
            .find(|o| o.run_id == run.run_id && o.review == "pending");
        let attempts: Vec<StoredAttempt> = s
            .store
            .attempts(&run.segment_id)
            .await?
            .into_iter()
            .filter(|a| a.run_id == run.run_id)
            .collect();
        rows.push(views::queue_row(&run, pending, &attempts, policy, now));
    }
    let project = project.map(|p| p.to_string()).unwrap_or_default();
    let scene_type = scene.map(|t| t.to_string()).unwrap_or_default();
    let link = |page: Option<&[u8]>| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if !project.is_empty() {
            q.append_pair("project", &project);
        }
        if !scene_type.is_empty() {
            q.append_pair("scene_type", &scene_type);
        }
        if per_page != QUEUE_PAGE {
            q.append_pair("per_page", &per_page.to_string());
        }
        if let Some(p) = page {
            q.append_pair("page", &hex::encode(p));
        }
        format!("/ui/review?{}", q.finish())
    };
    let page = QueuePage {
        nav: Nav::new(&who.who(), &who.session.csrf),
        flash: flash(&query),
        here: link(later.then_some(current.as_slice())),
        next: if page.next.is_empty() {
            String::new()
        } else {
            link(Some(&page.next))
        },
        first: link(None),
        later,
        total,
        project,
        scene_type,
        rows,
    };
    Ok(html(StatusCode::OK, &page))
}

/// The statuses the segments list filters by: how each segment's latest run stands.
const SEGMENT_STATUSES: [(&str, &str); 8] = [
    ("", "any"),
    ("running", "retrying now"),
    ("awaiting_review", "awaiting review"),
    ("passed", "passed"),
    ("escalated", "escalated"),
    ("aborted", "aborted"),
    ("budget_exhausted", "budget exhausted"),
    ("not_retried", "not retried"),
];

/// How many segments the list shows a page.
const SEGMENTS_PAGE: u32 = 50;

#[derive(Template)]
#[template(path = "segments.html")]
struct SegmentsPage {
    nav: Nav,
    search: String,
    status: String,
    statuses: Vec<(&'static str, &'static str)>,
    rows: Vec<views::SegmentListRow>,
    page: u32,
    /// Links to the previous and next pages (empty where there is none).
    previous: String,
    next: String,
}

/// Every segment, found by id, project or scene type and filtered by how its latest run stands
/// (`GET /ui/segments?q=…&status=…&page=…`): retries making attempts now come from Temporal's
/// visibility (`RetryOutcome = running`), every recorded run from the store, newest first, with
/// the selected attempt's output as a thumbnail.
pub(crate) async fn segments_list(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let text = |name: &str| optional(&query, name, |v| Ok(v.to_owned()));
    let search: String = text("q")?.unwrap_or_default().chars().take(100).collect();
    let status = text("status")?.unwrap_or_default();
    if !SEGMENT_STATUSES.iter().any(|(v, _)| *v == status) {
        return Err(ValidationError::single(
            "status",
            format!(
                "must be one of: {}",
                SEGMENT_STATUSES[1..]
                    .iter()
                    .map(|(v, _)| *v)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into());
    }
    let page = optional(&query, "page", |v| {
        v.parse::<u32>()
            .ok()
            .filter(|p| (1..=10_000).contains(p))
            .ok_or_else(|| {
                ValidationError::single("page", "must be a whole number from 1 to 10000")
            })
    })?
    .unwrap_or(1);
    let needle = search.to_lowercase();
    let mut rows = Vec::new();
    if page == 1 && (status.is_empty() || status == "running") {
        let filter = ReviewFilter {
            task_queue: &s.task_queue,
            project: None,
            scene_type: None,
            retrying: true,
        };
        let running = retake_client::awaiting_review(&s.temporal, &filter, 100, Vec::new())
            .await
            .map_err(AppError::from)?;
        rows.extend(
            running
                .runs
                .into_iter()
                .filter(|r| {
                    [&r.segment_id, &r.project_id, &r.scene_type]
                        .iter()
                        .any(|v| v.to_lowercase().contains(&needle))
                })
                .map(views::SegmentListRow::running),
        );
    }
    let mut more = false;
    if status != "running" {
        let (outcome, pending_review) = match status.as_str() {
            "" => (None, false),
            "awaiting_review" => (Some("escalated".to_owned()), true),
            other => (Some(other.to_owned()), false),
        };
        let found = s
            .store
            .segments(&SegmentQuery {
                search: search.clone(),
                outcome,
                pending_review,
                limit: SEGMENTS_PAGE + 1,
                offset: (page - 1) * SEGMENTS_PAGE,
            })
            .await?;
        more = found.len() > SEGMENTS_PAGE as usize;
        let listed: Vec<String> = rows.iter().map(|r| r.segment_id.clone()).collect();
        rows.extend(
            found
                .into_iter()
                .take(SEGMENTS_PAGE as usize)
                .filter(|r| !listed.contains(&r.segment_id))
                .map(views::SegmentListRow::recorded),
        );
    }
    let link = |page: u32| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if !search.is_empty() {
            q.append_pair("q", &search);
        }
        if !status.is_empty() {
            q.append_pair("status", &status);
        }
        if page > 1 {
            q.append_pair("page", &page.to_string());
        }
        format!("/ui/segments?{}", q.finish())
    };
    let page_view = SegmentsPage {
        nav: Nav::new(&who.who(), &who.session.csrf),
        previous: if page > 1 {
            link(page - 1)
        } else {
            String::new()
        },
        next: if more { link(page + 1) } else { String::new() },
        search,
        status,
        statuses: SEGMENT_STATUSES.to_vec(),
        rows,
        page,
    };
    Ok(html(StatusCode::OK, &page_view))
}

/// The scene type's stored policy, resolved as the workflow resolves it without an override
/// (review window, thresholds); the disabled default when none is stored or it no longer reads.
async fn policy_of(s: &AppState, scene_type: &str) -> Result<RetryPolicy, AppError> {
    let stored = s.store.policy(scene_type).await?;
    Ok(RetryPolicy::resolve(stored.as_ref(), None).unwrap_or_default())
}

// ---- a segment ------------------------------------------------------------------------------

/// One run of the segment: its outcome (once recorded) and its attempts side by side.
struct RunView {
    run_id: String,
    workflow_url: String,
    outcome: String,
    reason: String,
    report: String,
    review: String,
    gpu_total: String,
    live: bool,
    attempts: Vec<AttemptView>,
    decisions: Vec<EventView>,
}

/// The decision forms' values and errors (pre-filled, or as submitted when refused).
#[derive(Default)]
struct DecisionForm {
    /// The form the errors belong to (`accept`, `reject`, `retry_with`, `abort`, `escalate`).
    which: String,
    /// Errors without a field of their own (e.g. "not awaiting review").
    general: Vec<String>,
    reason: String,
    accept_attempt: String,
    attempt_error: String,
    params: Vec<Input>,
    vary: String,
    vary_error: String,
    attempts: String,
    attempts_error: String,
    /// What each new attempt reserves of the project's GPU budget before it runs (the policy's
    /// estimate; the scene type's attempts may have taught it more).
    per_attempt: String,
}

#[derive(Template)]
#[template(path = "segment.html")]
struct SegmentPage {
    nav: Nav,
    flash: &'static str,
    segment_id: String,
    project_id: String,
    scene_type: String,
    phase: String,
    /// The retry is making attempts: the page keeps its runs up to date from `live_path`.
    live: bool,
    live_path: String,
    can_decide: bool,
    can_steer: bool,
    /// The session's CSRF token when the attempt cards carry their own "Accept" button (a
    /// creator, in review); empty otherwise.
    decide_csrf: String,
    /// The segment just decided, when a decision brought the creator here, to the next one.
    decided: String,
    accept_choices: Vec<u32>,
    runs: Vec<RunView>,
    form: DecisionForm,
}

/// The runs and attempts alone, as the segment page shows them: what `console.js` fetches while
/// a retry runs.
#[derive(Template)]
#[template(path = "segment_runs.html")]
struct SegmentRuns {
    segment_id: String,
    phase: String,
    live: bool,
    live_path: String,
    /// Always empty: a running retry takes no decision (see [`SegmentPage::decide_csrf`]).
    decide_csrf: String,
    runs: Vec<RunView>,
}

/// Mark the best attempt of the run in review — the acceptable one with the highest quality,
/// the earliest on a tie — and say which it is. Pages preselect it; the creator still chooses.
fn mark_best(runs: &mut [RunView]) -> Option<u32> {
    let run = runs.iter_mut().find(|r| r.live)?;
    let best = run.attempts.iter_mut().filter(|a| a.acceptable).fold(
        None::<&mut AttemptView>,
        |best, a| match best {
            Some(b) if b.rank.unwrap_or(f64::MIN) >= a.rank.unwrap_or(f64::MIN) => Some(b),
            _ => Some(a),
        },
    )?;
    best.best = true;
    Some(best.number)
}

fn phase_name(p: Phase) -> String {
    json!(p).as_str().unwrap_or("unknown").to_owned()
}

pub(crate) async fn segment(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    PathText(raw): PathText,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let segment = SegmentId::parse(&raw)?;
    // Set by a decision that brought the creator on to this segment; a bad value only loses
    // the note.
    let decided = optional(&query, "decided", |v| SegmentId::parse(v))
        .ok()
        .flatten();
    let flash = flash(&query);
    segment_page(&who, &s, &segment, flash, decided, None, StatusCode::OK).await
}

/// The segment awaiting review that comes after `after` (`GET /ui/review/next?after=…`): the
/// newest other one in the queue, as the queue page lists them. A decision lands here, and so
/// does the `n` key. With none left, the decided segment's own page (after a decision: it shows
/// how the decision ended) or the queue.
pub(crate) async fn next_in_queue(
    _who: Signed<need::Viewer>,
    State(s): State<AppState>,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let after = optional(&query, "after", |v| SegmentId::parse(v))?;
    let done = match query.0.iter().rev().find(|(k, _)| k == "done") {
        Some((_, v)) if matches!(v.as_str(), "accept" | "reject") => v.as_str(),
        _ => "",
    };
    let filter = ReviewFilter {
        task_queue: &s.task_queue,
        project: None,
        scene_type: None,
        retrying: false,
    };
    // The decided segment may still be listed for a moment (visibility is eventually
    // consistent): one more than needed.
    let page = retake_client::awaiting_review(&s.temporal, &filter, 2, Vec::new())
        .await
        .map_err(AppError::from)?;
    let next = page
        .runs
        .iter()
        .map(|r| r.segment_id.as_str())
        .find(|id| after.as_ref().is_none_or(|a| a.as_str() != *id))
        .and_then(|id| SegmentId::parse(id).ok());
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if !done.is_empty() {
        q.append_pair("done", done);
    }
    let to = match (next, after) {
        (Some(next), Some(after)) => {
            q.append_pair("decided", after.as_str());
            format!("/ui/segments/{next}?{}", q.finish())
        }
        (Some(next), None) => format!("/ui/segments/{next}"),
        (None, Some(after)) if !done.is_empty() => {
            format!("/ui/segments/{after}?{}", q.finish())
        }
        (None, _) => "/ui/review?done=empty".to_owned(),
    };
    Ok(see_other(&to))
}

/// The segment's runs alone (`GET /ui/segments/{id}/live`), for the page's script to swap in
/// while the retry runs; a viewer may read it as they may read the page.
pub(crate) async fn segment_live(
    _who: Signed<need::Viewer>,
    State(s): State<AppState>,
    PathText(raw): PathText,
) -> Result<Response, PageError> {
    let segment = SegmentId::parse(&raw)?;
    let seen = Seen::load(&s, &segment).await?;
    let page = SegmentRuns {
        segment_id: segment.to_string(),
        decide_csrf: String::new(),
        live_path: live_path(&segment),
        live: seen.retrying,
        phase: seen.phase,
        runs: seen.runs,
    };
    Ok(html(StatusCode::OK, &page))
}

fn live_path(segment: &SegmentId) -> String {
    format!("/ui/segments/{segment}/live")
}

/// What is known of a segment now: its records, and the live status of a running retry.
struct Seen {
    project_id: String,
    scene_type: String,
    policy: RetryPolicy,
    live: Option<Status>,
    phase: String,
    running: bool,
    awaiting: bool,
    retrying: bool,
    runs: Vec<RunView>,
}

impl Seen {
    async fn load(s: &AppState, segment: &SegmentId) -> Result<Self, PageError> {
        let outcomes = s.store.outcomes(segment.as_str()).await?;
        let stored = s.store.attempts(segment.as_str()).await?;
        let latest = retake_client::latest_run(&s.temporal, segment)
            .await
            .map_err(AppError::from)?;
        let live: Option<Status> = match &latest {
            Some(r) if r.running => {
                match tokio::time::timeout(
                    LIVE_TIMEOUT,
                    retake_client::status(&s.temporal, segment),
                )
                .await
                {
                    Ok(Ok(status)) => Some(status),
                    _ => None,
                }
            }
            _ => None,
        };
        if outcomes.is_empty() && stored.is_empty() && latest.is_none() {
            return Err(AppError::NotFound(format!("segment {segment} has no retries")).into());
        }
        let running_id = latest
            .as_ref()
            .filter(|r| r.running)
            .map(|r| r.run_id.clone());
        let (project_id, scene_type) = identity(&outcomes, &stored, live.as_ref());
        let policy = policy_of(s, &scene_type).await?;
        let phase = match (&live, &latest) {
            (Some(st), _) => phase_name(st.phase),
            (None, Some(r)) if r.running => "running (live status unavailable)".to_owned(),
            (None, Some(_)) => "finished".to_owned(),
            (None, None) => "recorded".to_owned(),
        };
        let awaiting = live
            .as_ref()
            .is_some_and(|st| st.phase == Phase::AwaitingReview);
        let retrying = live
            .as_ref()
            .is_some_and(|st| matches!(st.phase, Phase::Starting | Phase::Retrying));
        let runs = run_views(
            s,
            segment,
            &outcomes,
            &stored,
            running_id.as_deref(),
            live.as_ref(),
            &policy,
        )
        .await;
        Ok(Self {
            project_id,
            scene_type,
            policy,
            live,
            phase,
            running: running_id.is_some(),
            awaiting,
            retrying,
            runs,
        })
    }
}

/// Render the segment page; `submitted` refills a refused form with its errors.
async fn segment_page(
    who: &Signed<impl Send + Sync>,
    s: &AppState,
    segment: &SegmentId,
    flash: &'static str,
    decided: Option<SegmentId>,
    submitted: Option<DecisionForm>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let mut seen = Seen::load(s, segment).await?;
    let accept_choices = seen
        .runs
        .iter()
        .find(|r| r.live)
        .map(|r| {
            r.attempts
                .iter()
                .filter(|a| a.acceptable)
                .map(|a| a.number)
                .collect()
        })
        .unwrap_or_default();
    let can_decide = seen.awaiting && who.role >= Role::Creator;
    let best = if seen.awaiting {
        mark_best(&mut seen.runs)
    } else {
        None
    };
    let mut fresh = prefill(seen.live.as_ref(), &seen.policy);
    if let Some(best) = best {
        fresh.accept_attempt = best.to_string();
    }
    let form = refill(submitted, fresh);
    let page = SegmentPage {
        nav: Nav::new(&who.who(), &who.session.csrf),
        flash,
        segment_id: segment.to_string(),
        project_id: seen.project_id,
        scene_type: seen.scene_type,
        phase: seen.phase,
        live: seen.retrying,
        live_path: live_path(segment),
        can_decide,
        can_steer: seen.running && !seen.awaiting && who.role >= Role::Creator,
        decide_csrf: if can_decide {
            who.session.csrf.clone()
        } else {
            String::new()
        },
        decided: decided.map(|d| d.to_string()).unwrap_or_default(),
        accept_choices,
        runs: seen.runs,
        form,
    };
    Ok(html(status, &page))
}

/// The segment's project and scene type, from whichever record has them.
fn identity(
    outcomes: &[StoredOutcome],
    attempts: &[StoredAttempt],
    live: Option<&Status>,
) -> (String, String) {
    if let Some(st) = live {
        return (st.project_id.clone(), st.scene_type.clone());
    }
    if let Some(o) = outcomes.last() {
        return (o.project_id.clone(), o.scene_type.clone());
    }
    attempts
        .last()
        .map(|a| (a.project_id.clone(), a.scene_type.clone()))
        .unwrap_or_default()
}

/// Every run, oldest first, with its attempts; the running run's attempts come from the live
/// status (the attempt in flight included) rather than the store.
async fn run_views(
    s: &AppState,
    segment: &SegmentId,
    outcomes: &[StoredOutcome],
    stored: &[StoredAttempt],
    running: Option<&str>,
    live: Option<&Status>,
    policy: &RetryPolicy,
) -> Vec<RunView> {
    let mut order: Vec<String> = Vec::new();
    for run in stored
        .iter()
        .map(|a| &a.run_id)
        .chain(outcomes.iter().map(|o| &o.run_id))
        .chain(running.map(str::to_owned).as_ref())
    {
        if !order.contains(run) {
            order.push(run.clone());
        }
    }
    let base = &s.console.temporal_ui;
    let namespace = s.temporal.namespace();
    let workflow_id = retake_domain::workflow_id(segment);
    let mut runs = Vec::with_capacity(order.len());
    for run_id in order {
        let outcome = outcomes.iter().rev().find(|o| o.run_id == run_id);
        let is_live = running == Some(run_id.as_str());
        let mut attempts = Vec::new();
        let records: Vec<&AttemptRecord> = match live.filter(|_| is_live) {
            Some(st) => {
                for a in &st.attempts {
                    attempts.push(
                        views::attempt(a, st.selected_attempt == Some(a.attempt), policy, &s.files)
                            .await,
                    );
                }
                // Every attempt in flight gets its card (parallel attempts run several at once;
                // runs that predate `running_attempts` name only the lowest).
                let running = if st.running_attempts.is_empty() {
                    st.running_attempt.into_iter().collect()
                } else {
                    st.running_attempts.clone()
                };
                for n in running {
                    if !st.attempts.iter().any(|a| a.attempt == n) {
                        attempts.push(match st.in_flight.iter().find(|i| i.attempt == n) {
                            Some(known) => AttemptView::planned(known),
                            None => AttemptView::in_flight(n),
                        });
                    }
                }
                st.attempts.iter().collect()
            }
            None => {
                let of_run: Vec<&AttemptRecord> = stored
                    .iter()
                    .filter(|a| a.run_id == run_id)
                    .map(|a| &a.record)
                    .collect();
                for (a, row) in of_run
                    .iter()
                    .zip(stored.iter().filter(|a| a.run_id == run_id))
                {
                    attempts.push(views::attempt(a, row.selected, policy, &s.files).await);
                }
                of_run
            }
        };
        views::add_diffs(&records, &mut attempts, &s.files).await;
        let decisions = match (live.filter(|_| is_live), outcome) {
            (Some(st), _) => st.decisions.iter().map(views::event).collect(),
            (None, Some(o)) => o.decisions.iter().map(views::event).collect(),
            (None, None) => Vec::new(),
        };
        runs.push(RunView {
            workflow_url: format!(
                "{base}/namespaces/{namespace}/workflows/{workflow_id}/{run_id}/history"
            ),
            outcome: outcome
                .map(|o| o.outcome.replace('_', " "))
                .unwrap_or_default(),
            reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            report: outcome
                .map(|o| o.report.clone())
                .or_else(|| live.filter(|_| is_live).map(|st| st.report.clone()))
                .unwrap_or_default(),
            review: outcome.map(|o| o.review.clone()).unwrap_or_default(),
            gpu_total: gpu(
                outcome.map_or_else(|| attempts_gpu(stored, &run_id), |o| o.gpu_ms_total)
            ),
            live: is_live,
            run_id,
            attempts,
            decisions,
        });
    }
    runs
}

fn attempts_gpu(stored: &[StoredAttempt], run_id: &str) -> u64 {
    stored
        .iter()
        .filter(|a| a.run_id == run_id)
        .map(|a| a.record.gpu_ms)
        .sum()
}

/// The decision forms pre-filled from the retry: the parameters of its latest attempt's base
/// (the seed left out: each attempt derives its own), the policy's jitter and attempt count.
fn prefill(live: Option<&Status>, policy: &RetryPolicy) -> DecisionForm {
    let base = live
        .and_then(|st| st.attempts.last())
        .map(|a| &a.original_params);
    let params = base
        .map(|p| {
            p.0.iter()
                .filter(|(k, _)| k.as_str() != "seed")
                .map(|(k, v)| Input {
                    name: k.clone(),
                    value: match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                    error: String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    DecisionForm {
        params,
        vary: serde_json::to_string_pretty(&policy.vary).unwrap_or_default(),
        attempts: policy.max_attempts.to_string(),
        per_attempt: gpu(policy.est_gpu_ms_per_attempt),
        accept_attempt: live
            .and_then(|st| {
                st.selected_attempt
                    .or(st.attempts.last().map(|a| a.attempt))
            })
            .map(|n| n.to_string())
            .unwrap_or_default(),
        ..DecisionForm::default()
    }
}

/// The decision forms to show: the refused one as it was submitted, every other as pre-filled
/// (`fresh`). Without this, a refused accept emptied the retry-with form's parameters.
fn refill(submitted: Option<DecisionForm>, fresh: DecisionForm) -> DecisionForm {
    let Some(mut form) = submitted else {
        return fresh;
    };
    form.per_attempt = fresh.per_attempt;
    if form.which != "retry_with" {
        form.params = fresh.params;
        form.vary = fresh.vary;
        form.attempts = fresh.attempts;
    }
    if form.which != "accept" {
        form.accept_attempt = fresh.accept_attempt;
    }
    form
}

/// The `decide` body the form stands for, as a JSON client would have sent it; and the form as
/// submitted, to refill it if the decision is refused. A `vary` that is not a JSON object is
/// refused here, naming `vary` (the API never sees a textarea).
fn decision_body(fields: &session::Fields) -> (Result<Value, ValidationError>, DecisionForm) {
    let decision = fields.get("decision").to_owned();
    let mut body = Map::new();
    body.insert("decision".into(), Value::String(decision.clone()));
    body.insert(
        "reason".into(),
        Value::String(fields.get("reason").to_owned()),
    );
    let mut form = DecisionForm {
        which: decision.clone(),
        reason: fields.get("reason").to_owned(),
        accept_attempt: fields.get("attempt").to_owned(),
        vary: fields.get("vary").to_owned(),
        attempts: fields.get("attempts").to_owned(),
        ..DecisionForm::default()
    };
    let mut invalid = None;
    match decision.as_str() {
        "accept" if !form.accept_attempt.is_empty() => {
            body.insert("attempt".into(), form_value(&form.accept_attempt));
        }
        "retry_with" => {
            let mut params = Map::new();
            for (k, v) in &fields.0 {
                if let Some(name) = k.strip_prefix("param:") {
                    form.params.push(Input {
                        name: name.to_owned(),
                        value: v.trim().to_owned(),
                        error: String::new(),
                    });
                    if !v.trim().is_empty() {
                        params.insert(name.to_owned(), form_value(v.trim()));
                    }
                }
            }
            if !params.is_empty() {
                body.insert("params".into(), Value::Object(params));
            }
            if !form.vary.is_empty() {
                match serde_json::from_str::<Value>(&form.vary) {
                    Ok(v @ Value::Object(_)) => {
                        body.insert("vary".into(), v);
                    }
                    _ => {
                        invalid = Some(ValidationError::single(
                            "vary",
                            "must be a JSON object of jitter specs, e.g. {\"cfg_scale\": {\"range\": 1.0}}",
                        ))
                    }
                }
            }
            if !form.attempts.is_empty() {
                body.insert("attempts".into(), form_value(&form.attempts));
            }
        }
        _ => {}
    }
    (invalid.map_or_else(|| Ok(Value::Object(body)), Err), form)
}

/// Put `errors` next to their inputs; what has no input of its own is listed above the form.
fn place_errors(form: &mut DecisionForm, errors: &[FieldError]) {
    form.attempt_error = errors_of(errors, "attempt");
    form.vary_error = errors_of(errors, "vary");
    form.attempts_error = errors_of(errors, "attempts");
    for p in &mut form.params {
        p.error = errors_of(errors, &format!("params.{}", p.name));
    }
    let placed = |f: &str| {
        f == "attempt"
            || f == "attempts"
            || f == "vary"
            || f.starts_with("vary.")
            || form
                .params
                .iter()
                .any(|p| f == format!("params.{}", p.name))
    };
    form.general = errors
        .iter()
        .filter(|e| !placed(&e.field))
        .map(|e| {
            if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect();
}

/// Show `e` on the segment page, next to the form that caused it, with the API's status code.
async fn refused(
    who: &Signed<impl Send + Sync>,
    s: &AppState,
    segment: &SegmentId,
    mut form: DecisionForm,
    e: AppError,
) -> Result<Response, PageError> {
    let status = e.status();
    let errors = match e {
        AppError::Invalid(v) => v.errors,
        AppError::Rejected(m) => rejected_fields(&m),
        AppError::Unavailable(_) | AppError::Internal(_) => return Err(e.into()),
        other => vec![FieldError::new("", other.to_string())],
    };
    place_errors(&mut form, &errors);
    segment_page(who, s, segment, "", None, Some(form), status).await
}

/// A review decision from the segment page, through the JSON endpoint's `decide_as`.
pub(crate) async fn decide(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Creator>,
) -> Result<Response, PageError> {
    let segment = SegmentId::parse(&raw)?;
    let (body, form) = decision_body(&posted.fields);
    let which = form.which.clone();
    let result = match body {
        Ok(body) => segments::decide_as(&posted.who.who(), &s, &segment, body)
            .await
            .map(|_| ()),
        Err(v) => Err(AppError::Invalid(v)),
    };
    match result {
        // A decision that ends the review moves the creator on to the next segment in review;
        // a retry stays, to watch its attempts.
        Ok(()) if matches!(which.as_str(), "accept" | "reject") => Ok(see_other(&format!(
            "/ui/review/next?after={segment}&done={which}"
        ))),
        Ok(()) => Ok(see_other(&format!(
            "/ui/segments/{segment}?done={}",
            if which == "retry_with" {
                "retry_with"
            } else {
                ""
            }
        ))),
        Err(e) => refused(&posted.who, &s, &segment, form, e).await,
    }
}

async fn steer(
    s: AppState,
    raw: String,
    posted: Posted<need::Creator>,
    action: Creator,
    name: &str,
) -> Result<Response, PageError> {
    let segment = SegmentId::parse(&raw)?;
    let body = json!({"reason": posted.fields.get("reason")});
    match segments::signal(&posted.who.who(), &s, &segment, body, action).await {
        Ok(_) => Ok(see_other(&format!("/ui/segments/{segment}?done={name}"))),
        Err(e) => {
            let form = DecisionForm {
                which: name.to_owned(),
                reason: posted.fields.get("reason").to_owned(),
                ..DecisionForm::default()
            };
            refused(&posted.who, &s, &segment, form, e).await
        }
    }
}

pub(crate) async fn abort(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Creator>,
) -> Result<Response, PageError> {
    steer(s, raw, posted, Creator::Abort, "abort").await
}

pub(crate) async fn escalate(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Creator>,
) -> Result<Response, PageError> {
    steer(s, raw, posted, Creator::Escalate, "escalate").await
}

// ---- settings: scene types and projects -----------------------------------------------------

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    /// Every known scene type, with whether it has a stored policy.
    scene_types: Vec<(String, bool)>,
    /// Every known project, with whether it has a budget.
    projects: Vec<(String, bool)>,
}

/// The settings index: every known scene type and project, as stored, and two look-up forms (a
/// GET with `scene_type` or `project` goes there).
pub(crate) async fn settings(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    query: QueryPairs,
) -> Result<Response, PageError> {
    if let Some(t) = optional(&query, "scene_type", |v| SceneType::parse(v))? {
        return Ok(see_other(&format!("/ui/scene-types/{t}")));
    }
    if let Some(p) = optional(&query, "project", |v| ProjectId::parse(v))? {
        return Ok(see_other(&format!("/ui/projects/{p}")));
    }
    let known = s.store.known().await?;
    Ok(html(
        StatusCode::OK,
        &SettingsPage {
            nav: Nav::new(&who.who(), &who.session.csrf),
            scene_types: known.scene_types,
            projects: known.projects,
        },
    ))
}

#[derive(Template)]
#[template(path = "scene_type.html")]
struct SceneTypePage {
    nav: Nav,
    flash: &'static str,
    scene_type: String,
    stored: bool,
    policy: String,
    can_edit: bool,
    /// The field-by-field form.
    fields: PolicyForm,
    /// The JSON form: its text and errors.
    text: String,
    errors: Vec<FieldError>,
    /// Who stored which policy, newest first.
    changes: Vec<views::ChangeView>,
    /// Known scene types that differ from this one only by case.
    similar: Vec<String>,
}

/// A refused policy form, shown again with its errors.
enum PolicySubmitted {
    Fields(Box<PolicyForm>),
    Json(String, Vec<FieldError>),
}

pub(crate) async fn scene_type(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    PathText(raw): PathText,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let scene = SceneType::parse(&raw)?;
    scene_type_page(&who, &s, &scene, flash(&query), None, StatusCode::OK).await
}

async fn scene_type_page(
    who: &Signed<impl Send + Sync>,
    s: &AppState,
    scene: &SceneType,
    flash: &'static str,
    submitted: Option<PolicySubmitted>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let stored = s.store.policy(scene.as_str()).await?;
    // Ids are matched as stored: `Action` is not `action`. Say so when the id differs from a
    // known one only by case, rather than show an editable default that would start another.
    let similar: Vec<String> = if stored.is_none() {
        s.store
            .known()
            .await?
            .scene_types
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id != scene.as_str() && id.eq_ignore_ascii_case(scene.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    let changes = s
        .store
        .policy_changes(scene.as_str(), policies::CHANGES_SHOWN + 1)
        .await?;
    let complete = changes.len() <= policies::CHANGES_SHOWN as usize;
    let changes = views::policy_changes(&changes, complete)
        .into_iter()
        .take(policies::CHANGES_SHOWN as usize)
        .collect();
    let policy = RetryPolicy::resolve(stored.as_ref(), None).map_err(AppError::from)?;
    let shown = serde_json::to_string_pretty(&policy).unwrap_or_default();
    let (fields, (text, errors)) = match submitted {
        Some(PolicySubmitted::Fields(f)) => (*f, (shown.clone(), Vec::new())),
        Some(PolicySubmitted::Json(t, e)) => (PolicyForm::of(&policy), (t, e)),
        None => (PolicyForm::of(&policy), (shown.clone(), Vec::new())),
    };
    let page = SceneTypePage {
        nav: Nav::new(&who.who(), &who.session.csrf),
        flash,
        scene_type: scene.to_string(),
        stored: stored.is_some(),
        policy: shown,
        can_edit: who.role >= Role::Admin,
        fields,
        text,
        errors,
        changes,
        similar,
    };
    Ok(html(status, &page))
}

/// Store a policy from the JSON form, through `PUT`'s `store_policy`.
pub(crate) async fn set_policy(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Admin>,
) -> Result<Response, PageError> {
    let scene = SceneType::parse(&raw)?;
    let text = posted.fields.get("policy").to_owned();
    let stored = match serde_json::from_str::<Value>(&text) {
        Ok(body) => policies::store_policy(&posted.who.who(), &s, &scene, &body)
            .await
            .map(|_| ()),
        Err(e) => Err(AppError::Invalid(ValidationError::single(
            "body",
            format!("not valid JSON: {e}"),
        ))),
    };
    match stored {
        Ok(()) => Ok(see_other(&format!("/ui/scene-types/{scene}?done=saved"))),
        Err(AppError::Invalid(v)) => {
            scene_type_page(
                &posted.who,
                &s,
                &scene,
                "",
                Some(PolicySubmitted::Json(text, v.errors)),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// Store a policy from the field-by-field form: the form on top of the stored policy, through
/// `PUT`'s `store_policy`; refused, each error is shown at its input.
pub(crate) async fn set_policy_fields(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Admin>,
) -> Result<Response, PageError> {
    let scene = SceneType::parse(&raw)?;
    let mut form = PolicyForm::read(&posted.fields);
    let base = policy_of(&s, scene.as_str()).await?;
    let stored = match form.body(&base) {
        Ok(body) => policies::store_policy(&posted.who.who(), &s, &scene, &body)
            .await
            .map(|_| ()),
        Err(v) => Err(AppError::Invalid(v)),
    };
    match stored {
        Ok(()) => Ok(see_other(&format!("/ui/scene-types/{scene}?done=saved"))),
        Err(AppError::Invalid(v)) => {
            form.place(&v.errors);
            scene_type_page(
                &posted.who,
                &s,
                &scene,
                "",
                Some(PolicySubmitted::Fields(Box::new(form))),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    nav: Nav,
    flash: &'static str,
    project: String,
    known: bool,
    limit: String,
    reserved: String,
    spent: String,
    left: String,
    can_edit: bool,
    text: String,
    errors: Vec<FieldError>,
}

pub(crate) async fn project(
    who: Signed<need::Viewer>,
    State(s): State<AppState>,
    PathText(raw): PathText,
    query: QueryPairs,
) -> Result<Response, PageError> {
    let project = ProjectId::parse(&raw)?;
    project_page(&who, &s, &project, flash(&query), None, StatusCode::OK).await
}

fn ms_and_seconds(ms: u64) -> String {
    format!("{ms} ms ({})", gpu(ms))
}

async fn project_page(
    who: &Signed<impl Send + Sync>,
    s: &AppState,
    project: &ProjectId,
    flash: &'static str,
    submitted: Option<(String, Vec<FieldError>)>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let budget: Option<Budget> = s.store.budget(project.as_str()).await?;
    let b = budget.clone().unwrap_or_default();
    let (text, errors) = submitted.unwrap_or_else(|| {
        (
            b.limit_ms.map(|l| l.to_string()).unwrap_or_default(),
            Vec::new(),
        )
    });
    let page = ProjectPage {
        nav: Nav::new(&who.who(), &who.session.csrf),
        flash,
        project: project.to_string(),
        known: budget.is_some(),
        limit: b.limit_ms.map_or_else(|| "none".to_owned(), ms_and_seconds),
        reserved: ms_and_seconds(b.reserved_ms),
        spent: ms_and_seconds(b.spent_ms),
        left: b.limit_ms.map_or_else(
            || "unlimited".to_owned(),
            |l| ms_and_seconds(l.saturating_sub(b.reserved_ms + b.spent_ms)),
        ),
        can_edit: who.role >= Role::Admin,
        text,
        errors,
    };
    Ok(html(status, &page))
}

/// Set or remove (empty field) a project's limit, through `PUT`'s `store_limit`.
pub(crate) async fn set_budget(
    State(s): State<AppState>,
    PathText(raw): PathText,
    posted: Posted<need::Admin>,
) -> Result<Response, PageError> {
    let project = ProjectId::parse(&raw)?;
    let text = posted.fields.get("limit_ms").to_owned();
    let limit = if text.is_empty() {
        Value::Null
    } else {
        form_value(&text)
    };
    match budgets::store_limit(&s, &project, &json!({"limit_ms": limit})).await {
        Ok(_) => Ok(see_other(&format!("/ui/projects/{project}?done=saved"))),
        Err(AppError::Invalid(v)) => {
            project_page(
                &posted.who,
                &s,
                &project,
                "",
                Some((text, v.errors)),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(live: bool, attempts: &[(u32, bool, Option<f64>)]) -> RunView {
        RunView {
            run_id: "r".into(),
            workflow_url: String::new(),
            outcome: String::new(),
            reason: String::new(),
            report: String::new(),
            review: String::new(),
            gpu_total: String::new(),
            live,
            attempts: attempts
                .iter()
                .map(|&(n, acceptable, rank)| AttemptView {
                    acceptable,
                    rank,
                    running: false,
                    ..AttemptView::in_flight(n)
                })
                .collect(),
            decisions: Vec::new(),
        }
    }

    fn best_of(runs: &mut [RunView]) -> (Option<u32>, Vec<u32>) {
        let best = mark_best(runs);
        let marked = runs
            .iter()
            .flat_map(|r| r.attempts.iter().filter(|a| a.best).map(|a| a.number))
            .collect();
        (best, marked)
    }

    #[test]
    fn the_best_attempt_is_the_acceptable_one_of_the_run_in_review_with_the_highest_quality() {
        // Attempt 3 scored highest but has no output; attempt 9 is in an older run.
        let mut runs = [
            run(false, &[(9, true, Some(0.99))]),
            run(
                true,
                &[
                    (1, true, Some(0.4)),
                    (2, true, Some(0.7)),
                    (3, false, Some(0.9)),
                    (4, true, None),
                ],
            ),
        ];
        assert_eq!(best_of(&mut runs), (Some(2), vec![2]));
    }

    #[test]
    fn on_a_tie_the_earliest_attempt_is_the_best_and_none_is_when_nothing_can_be_accepted() {
        let mut tie = [run(true, &[(1, true, Some(0.5)), (2, true, Some(0.5))])];
        assert_eq!(best_of(&mut tie), (Some(1), vec![1]));
        let mut unscored = [run(true, &[(1, true, None), (2, true, None)])];
        assert_eq!(best_of(&mut unscored), (Some(1), vec![1]));
        let mut nothing = [run(true, &[(1, false, Some(0.5))])];
        assert_eq!(best_of(&mut nothing), (None, vec![]));
        let mut finished = [run(false, &[(1, true, Some(0.5))])];
        assert_eq!(best_of(&mut finished), (None, vec![]));
    }

    fn fresh() -> DecisionForm {
        DecisionForm {
            params: vec![Input {
                name: "cfg_scale".into(),
                value: "7".into(),
                error: String::new(),
            }],
            vary: "{}".into(),
            attempts: "3".into(),
            accept_attempt: "2".into(),
            ..DecisionForm::default()
        }
    }

    #[test]
    fn a_refused_accept_keeps_the_retry_with_form_filled() {
        let refused = DecisionForm {
            which: "accept".into(),
            accept_attempt: "3".into(),
            general: vec!["attempt 3 was cancelled and has no output to accept".into()],
            ..DecisionForm::default()
        };
        let form = refill(Some(refused), fresh());
        assert_eq!(form.accept_attempt, "3", "the refused form as submitted");
        assert_eq!(form.params, fresh().params, "the others pre-filled");
        assert_eq!((form.vary.as_str(), form.attempts.as_str()), ("{}", "3"));
        assert_eq!(form.general.len(), 1);
        assert_eq!(refill(None, fresh()).attempts, "3");
    }
}
