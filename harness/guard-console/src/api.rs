//! What the pages read (JSON, SVG, a live stream) and the actions they post. Each action is
//! one [`guardlab_policy_store::PolicyStore`] method: the same the scenario's steps call.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use guardlab_engine::deviation::DeviationReport;
use guardlab_engine::document::{parse_document, to_yaml};
use guardlab_engine::model::{Document, Mode, Policy};
use guardlab_engine::policy;
use guardlab_policy_store::{PolicyStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::AppState;

/// An action refused: 400 with the store's words (or 404 for what is not there).
pub(crate) struct ApiError(StatusCode, String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::NoPolicy(_)
            | StoreError::NoFingerprint(_)
            | StoreError::NoDeviation { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FingerprintSummary {
    name: String,
    image: String,
    namespace: String,
    container_name: String,
    pod: String,
    /// `learning` while the baseline runs, `final` after.
    status: &'static str,
    processes: usize,
    egress: usize,
    ingress: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicySummary {
    uid: String,
    name: String,
    mode: &'static str,
    enabled: bool,
    status: String,
    unique: usize,
    total: u64,
}

fn count_nodes(nodes: &[guardlab_engine::model::ProcessNode]) -> usize {
    nodes
        .iter()
        .map(|n| 1 + n.children.as_deref().map(count_nodes).unwrap_or(0))
        .sum()
}

fn mode_word(p: &Policy) -> &'static str {
    match policy::mode(p) {
        Mode::Audit => "audit",
        Mode::Enforce => "enforce",
    }
}

fn summaries(store: &mut PolicyStore) -> (Vec<PolicySummary>, DeviationReport) {
    let report = store.deviation_report();
    let list = store
        .policies()
        .iter()
        .map(|p| {
            let uid = policy::policy_uid(p);
            let counts = report.policies.iter().find(|r| r.uid == uid);
            PolicySummary {
                name: p.metadata.name.clone(),
                mode: mode_word(p),
                enabled: policy::is_enabled(p),
                status: policy::status(p).to_string(),
                unique: counts.map(|c| c.unique).unwrap_or(0),
                total: counts.map(|c| c.total).unwrap_or(0),
                uid,
            }
        })
        .collect();
    (list, report)
}

/// Everything a page needs to draw its lists.
pub(crate) async fn state(State(app): State<AppState>) -> Json<Value> {
    let value = app.store.update(|store| {
        let learning = store.learning();
        let fingerprints: Vec<_> = store
            .fingerprints()
            .into_iter()
            .map(|f| {
                let sel = f.spec.container_selector.clone().unwrap_or_default();
                FingerprintSummary {
                    image: sel.image.unwrap_or_default(),
                    namespace: f.metadata.namespace.clone().unwrap_or_default(),
                    container_name: f.metadata.container_name.clone().unwrap_or_default(),
                    pod: f.metadata.pod.clone().unwrap_or_default(),
                    status: if learning { "learning" } else { "final" },
                    processes: count_nodes(&f.spec.process_policy),
                    egress: f.spec.network_policy.egress.len(),
                    ingress: f.spec.network_policy.ingress.len(),
                    name: f.metadata.name,
                }
            })
            .collect();
        let (policies, report) = summaries(store);
        json!({
            "title": app.title,
            "generation": store.generation(),
            "eventsSeen": store.events_seen(),
            "learning": learning,
            "fingerprints": fingerprints,
            "policies": policies,
            "flags": report.flags.len(),
            "workshop": store.workshop_step(),
        })
    });
    Json(value)
}

/// The store's changes as server-sent events: each `change` carries its generation and the
/// kernel time of the event behind it, so the page can show how long the way to it took.
pub(crate) async fn events(
    State(app): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let watch = app.store.watch();
    let start = app.store.read(|s| s.generation());
    let stream = futures::stream::unfold((watch, start), move |(mut watch, seen)| {
        let store = app.store.clone();
        async move {
            loop {
                let now = store.read(|s| s.generation());
                if now > seen {
                    let changes = store.read(|s| s.changes_since(seen));
                    let data = match changes {
                        Some(list) => json!({ "generation": now, "changes": list }),
                        None => json!({ "generation": now, "reload": true }),
                    };
                    let event = SseEvent::default().event("change").data(data.to_string());
                    return Some((Ok(event), (watch, now)));
                }
                if watch.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

pub(crate) async fn fingerprint(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    app.store.read(|store| {
        let found = store
            .fingerprints()
            .into_iter()
            .find(|f| f.metadata.name == name)
            .ok_or(StoreError::NoFingerprint(name))?;
        Ok(Json(json!({
            "name": found.metadata.name,
            "yaml": to_yaml(&Document::Fingerprint(found.clone())),
            "svg": crate::graphs::fingerprint_svg(&found),
        })))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PolicyRequest {
    #[serde(default)]
    fingerprints: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    /// An edited preview: when given, the policy is this YAML.
    #[serde(default)]
    yaml: Option<String>,
}

fn parse_mode(word: Option<&str>) -> ApiResult<Mode> {
    match word.unwrap_or("audit") {
        "audit" | "Audit" => Ok(Mode::Audit),
        "enforce" | "Enforce" | "Enforcing" => Ok(Mode::Enforce),
        other => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("mode {other:?}: expected audit or enforce"),
        )),
    }
}

fn name_of(request: &PolicyRequest) -> Option<&str> {
    request.name.as_deref().filter(|n| !n.trim().is_empty())
}

pub(crate) async fn preview_policy(
    State(app): State<AppState>,
    Json(request): Json<PolicyRequest>,
) -> ApiResult<Json<Value>> {
    let mode = parse_mode(request.mode.as_deref())?;
    let policy = app
        .store
        .read(|s| s.preview_policy(&request.fingerprints, name_of(&request), mode))?;
    Ok(Json(json!({
        "name": policy.metadata.name,
        "yaml": to_yaml(&Document::Policy(policy)),
    })))
}

fn policy_from_yaml(text: &str, name: Option<&str>, mode: Mode) -> ApiResult<Policy> {
    let doc = parse_document("the edited policy", text).map_err(|diagnostics| {
        let words: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        ApiError(StatusCode::BAD_REQUEST, words.join("\n"))
    })?;
    let Document::Policy(mut policy) = doc else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the edited YAML is not a GuardianPolicy document".into(),
        ));
    };
    if let Some(name) = name {
        policy.metadata.name = name.to_string();
    }
    policy::set_mode(&mut policy, mode);
    Ok(policy)
}

pub(crate) async fn create_policy(
    State(app): State<AppState>,
    Json(request): Json<PolicyRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mode = parse_mode(request.mode.as_deref())?;
    let edited = match &request.yaml {
        Some(text) => Some(policy_from_yaml(text, name_of(&request), mode)?),
        None => None,
    };
    let made = app.store.update(|s| {
        let made = match edited {
            Some(policy) => s.add_policy(policy)?,
            None => s.create_policy(&request.fingerprints, name_of(&request), mode)?,
        };
        Ok::<_, StoreError>((policy::policy_uid(made), made.metadata.name.clone()))
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "uid": made.0, "name": made.1 })),
    ))
}

pub(crate) async fn policy(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    app.store.update(|store| {
        let found = store.policy(&id)?.clone();
        let uid = policy::policy_uid(&found);
        let report = store.deviation_report();
        let mine = report.policies.iter().find(|r| r.uid == uid);
        let deviations: Vec<Value> = mine
            .map(|r| {
                r.deviations
                    .iter()
                    .map(|d| {
                        json!({
                            "uid": d.uid,
                            "type": format!("{:?}", d.deviation.metadata.kind).to_lowercase(),
                            "count": d.count,
                            "relevant": d.relevant,
                            "firstTimestamp": d.first_timestamp,
                            "latestTimestamp": d.latest_timestamp,
                            "summary": crate::graphs::deviation_summary(&d.deviation),
                            "yaml": to_yaml(&Document::Deviation(d.deviation.clone())),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let response = found.spec.response.clone();
        Ok(Json(json!({
            "uid": uid,
            "name": found.metadata.name,
            "mode": mode_word(&found),
            "enabled": policy::is_enabled(&found),
            "status": policy::status(&found).to_string(),
            "unique": mine.map(|r| r.unique).unwrap_or(0),
            "total": mine.map(|r| r.total).unwrap_or(0),
            "response": response,
            "yaml": to_yaml(&Document::Policy(found)),
            "deviations": deviations,
        })))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SaveRequest {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    /// A kill to add to the response actions (`agentKillProcess`...).
    #[serde(default)]
    add_kill: Option<policy::KillAction>,
}

/// Policy info's Save: the mode and the Enabled switch.
pub(crate) async fn save_policy(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<SaveRequest>,
) -> ApiResult<Json<Value>> {
    let mode = match request.mode.as_deref() {
        Some(word) => Some(parse_mode(Some(word))?),
        None => None,
    };
    let status = app.store.update(|s| {
        if let Some(mode) = mode {
            s.set_mode(&id, mode)?;
        }
        if let Some(enabled) = request.enabled {
            s.set_enabled(&id, enabled)?;
        }
        if let Some(kill) = request.add_kill {
            s.add_kill_action(&id, kill)?;
        }
        Ok::<_, StoreError>(policy::status(s.policy(&id)?).to_string())
    })?;
    Ok(Json(json!({ "status": status })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MergeRequest {
    #[serde(default)]
    deviations: Vec<String>,
}

pub(crate) async fn merge(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<MergeRequest>,
) -> ApiResult<Json<Value>> {
    let merged = app
        .store
        .update(|s| s.merge_deviations(&id, &request.deviations).map(|(_, n)| n))?;
    Ok(Json(json!({ "merged": merged })))
}

#[derive(Deserialize)]
pub(crate) struct GraphQuery {
    /// Deviation uids, comma separated: those drawn (in red) on the graph.
    #[serde(default)]
    deviations: Option<String>,
}

impl GraphQuery {
    fn selected(&self) -> Option<Vec<String>> {
        self.deviations.as_ref().map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
    }
}

fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

pub(crate) async fn policy_graph(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<GraphQuery>,
) -> ApiResult<Response> {
    let selected = query.selected().unwrap_or_default();
    let body = app.store.update(|store| {
        let found = store.policy(&id)?.clone();
        let uid = policy::policy_uid(&found);
        let report = store.deviation_report();
        let deviations: Vec<_> = report
            .policies
            .iter()
            .filter(|r| r.uid == uid)
            .flat_map(|r| r.deviations.iter())
            .filter(|d| selected.contains(&d.uid))
            .map(|d| d.deviation.clone())
            .collect();
        Ok::<_, StoreError>(crate::graphs::policy_svg(&found, &deviations))
    })?;
    Ok(svg(body))
}

pub(crate) async fn investigation(State(app): State<AppState>) -> Json<Value> {
    let investigation = app.store.read(|s| s.investigation());
    Json(json!({
        "text": investigation.render_text(),
        "deviations": investigation.deviations.len(),
        "flags": investigation.flags.len(),
    }))
}

pub(crate) async fn investigation_graph(
    State(app): State<AppState>,
    Query(query): Query<GraphQuery>,
) -> Response {
    let mut investigation = app.store.read(|s| s.investigation());
    if let Some(selected) = query.selected() {
        investigation
            .deviations
            .retain(|d| selected.contains(&d.deviation_uid));
    }
    svg(crate::graphs::investigation_svg(&investigation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ViewedRequest {
    page: String,
}

/// The page says what the person opened: a workshop's "look at" step waits for it.
pub(crate) async fn viewed(
    State(app): State<AppState>,
    Json(request): Json<ViewedRequest>,
) -> ApiResult<StatusCode> {
    if !matches!(
        request.page.as_str(),
        "deviations" | "investigation" | "flags" | "policy-graph"
    ) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "page {:?}: expected deviations, investigation, flags or policy-graph",
                request.page
            ),
        ));
    }
    app.store.update(|s| s.viewed(&request.page));
    Ok(StatusCode::NO_CONTENT)
}

/// "Have guardlab do it": the workshop step the run waits at goes on, as at Enter.
pub(crate) async fn workshop_go(State(app): State<AppState>) -> ApiResult<StatusCode> {
    let waiting = app.store.update(|s| {
        let waiting = s.workshop_step().is_some();
        if waiting {
            s.go();
        }
        waiting
    });
    if waiting {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(
            StatusCode::CONFLICT,
            "no workshop step is waiting (the run is not paced, or it is doing a step)".into(),
        ))
    }
}

/// Red flags, newest first.
pub(crate) async fn flags(State(app): State<AppState>) -> Json<Value> {
    let flags: Vec<Value> = app.store.read(|s| {
        s.flags()
            .iter()
            .enumerate()
            .rev()
            .map(|(index, entry)| {
                let mut v = serde_json::to_value(entry).unwrap_or(Value::Null);
                v["index"] = json!(index);
                v
            })
            .collect()
    });
    Json(json!({ "flags": flags }))
}
