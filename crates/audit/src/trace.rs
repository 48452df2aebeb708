//! Reads an audit trail back as a tree, for `sidekey audit trace`: end user (`on_behalf_of`) →
//! task → the agents' grants, nested by `parent_grant` (a sub-agent's grant under the grant it
//! was derived from) → under each grant the credentials it used, with their events, and its
//! requests.
//!
//! It lives next to the writer, not in the binary, so that the field names it reads are tested
//! against the records this crate writes (a test writes real records through [`AuditLog`] and
//! traces them): renaming a field breaks that test, not a user's trace. It reads lines as
//! untyped JSON on purpose: a trail spans versions, and a line from an older or newer sidekey
//! must still place what it can.
//!
//! [`AuditLog`]: crate::AuditLog

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead};

use serde::Serialize;
use serde_json::{Map, Value};

/// Grants nested deeper than this under their task are shown at task level instead, so that a
/// corrupt or hostile file cannot make the tree (and the recursion that prints it) unbounded.
/// Real delegation chains are a few levels deep.
pub const MAX_DEPTH: usize = 32;

/// Which tasks to show; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub task: Option<String>,
    pub user: Option<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.task.is_none() && self.user.is_none()
    }

    fn matches(&self, user: Option<&str>, task: Option<&str>) -> bool {
        self.matches_task(task) && self.user.as_deref().is_none_or(|u| user == Some(u))
    }

    fn matches_task(&self, task: Option<&str>) -> bool {
        self.task.as_deref().is_none_or(|t| task == Some(t))
    }
}

/// The tree, in the order each node first appears in the file.
#[derive(Debug, Serialize)]
pub struct Trace {
    pub users: Vec<User>,
    /// Requests with neither a task nor a grant: counted, not listed. Absent when a filter is
    /// given (such requests match no task or user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed_requests: Option<u64>,
    /// What was not placed in the tree; reported apart from it (on stderr by the CLI).
    #[serde(skip)]
    pub skipped: Skipped,
}

/// An end user, or `None` for tasks run for no one in particular.
#[derive(Debug, Serialize)]
pub struct User {
    pub user: Option<String>,
    pub tasks: Vec<Task>,
}

/// One task of one user: its agents' grants and what was done in it without a grant.
#[derive(Debug, Serialize)]
pub struct Task {
    /// `None` only for grants whose requests carried no `task_id`.
    pub task_id: Option<String>,
    /// The grants not nested under another grant of this task.
    pub agents: Vec<Agent>,
    /// Requests of this task made without a grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_grant: Option<Usage>,
    #[serde(skip)]
    no_grant_first: u64,
}

/// One grant: the agent (`sub`) it was issued to, what it used, and the grants derived from it.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub grant_id: String,
    pub sub: Option<String>,
    /// Absent for a root grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    pub act: Vec<String>,
    #[serde(flatten)]
    pub usage: Usage,
    /// Sub-agents: the grants derived from this one.
    pub agents: Vec<Agent>,
    #[serde(skip)]
    first: u64,
}

/// The grant an [`Agent`]'s grant was derived from, and where the tree shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Parent {
    pub grant_id: String,
    #[serde(flatten)]
    pub link: Link,
}

/// Why a grant with a parent is where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "link", rename_all = "snake_case")]
pub enum Link {
    /// Nested under its parent.
    Nested,
    /// No request of the file was made under the parent grant: shown at task level.
    NotInFile,
    /// The parent is in another task (or another user's): shown at task level.
    Elsewhere {
        user: Option<String>,
        task_id: Option<String>,
    },
    /// Its parents lead back to it: shown at task level to break the loop.
    Cycle,
    /// Nested deeper than [`MAX_DEPTH`]: shown at task level.
    TooDeep,
}

/// What a grant (or a task without one) used: its credentials, each with the requests that
/// carried it, and its requests that carried none.
#[derive(Debug, Default, Serialize)]
pub struct Usage {
    pub credentials: Vec<Credential>,
    pub requests: Vec<Request>,
}

/// A credential (by name and issuer ID) as used under one grant.
#[derive(Debug, Serialize)]
pub struct Credential {
    pub credential: String,
    pub credential_id: Option<String>,
    /// Its events that name this grant (`issued`, `renewed`, …).
    pub events: Vec<Event>,
    pub requests: Vec<Request>,
    #[serde(skip)]
    first: u64,
}

/// A credential event: what happened (`issued`, …) and when.
#[derive(Debug, Serialize)]
pub struct Event {
    pub event: String,
    pub ts: Option<String>,
}

/// One request record, the fields a trace shows.
#[derive(Debug, Serialize)]
pub struct Request {
    pub ts: Option<String>,
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u64>,
    pub path: Option<String>,
    pub decision: Option<String>,
    pub status: Option<u64>,
    pub code: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    line: u64,
}

/// Lines and records left out of the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Lines that are not a JSON object.
    pub not_json: u64,
    /// Records of other types (`config`, …; `""` for none), in first-appearance order.
    pub types: Vec<(String, u64)>,
    /// Credential events that name no grant (all of them before task grants).
    pub credential_without_grant: u64,
    /// Credential events naming a grant under which no request was made in this file.
    pub credential_unknown_grant: u64,
}

impl Skipped {
    /// One line for the user, `None` when nothing was skipped.
    pub fn summary(&self) -> Option<String> {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        if self.not_json > 0 {
            parts.push(plural(
                self.not_json,
                "line that is not a JSON record",
                "lines that are not JSON records",
            ));
        }
        for (kind, n) in &self.types {
            let kind = if kind.is_empty() { "untyped" } else { kind };
            parts.push(plural(
                *n,
                &format!("\"{kind}\" record"),
                &format!("\"{kind}\" records"),
            ));
        }
        if self.credential_without_grant > 0 {
            parts.push(plural(
                self.credential_without_grant,
                "credential event without grant_id",
                "credential events without grant_id",
            ));
        }
        if self.credential_unknown_grant > 0 {
            parts.push(plural(
                self.credential_unknown_grant,
                "credential event of a grant with no request in this file",
                "credential events of grants with no request in this file",
            ));
        }
        (!parts.is_empty()).then(|| format!("skipped {}", parts.join(", ")))
    }

    fn count_type(&mut self, kind: &str) {
        match self.types.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.types.push((kind.to_string(), 1)),
        }
    }
}

/// Reads a whole trail and builds its tree. Only an I/O error fails: a line that is not a
/// record is counted in [`Trace::skipped`].
pub fn read(mut input: impl BufRead, filter: Filter) -> io::Result<Trace> {
    let mut builder = Builder::new(filter);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        match std::str::from_utf8(&buf) {
            Ok(line) => builder.line(line),
            Err(_) => builder.not_json(),
        }
    }
    Ok(builder.finish())
}

/// Builds a [`Trace`] one line at a time. Only the requests of tasks the filter matches are
/// kept; every grant's place is remembered, so that a parent outside the filter is named.
pub struct Builder {
    filter: Filter,
    /// The number of the line being read: the order of first appearance.
    line: u64,
    /// Each user and the indices of its tasks.
    users: Vec<(Option<String>, Vec<usize>)>,
    user_index: HashMap<Option<String>, usize>,
    tasks: Vec<TaskAcc>,
    task_index: HashMap<(Option<String>, Option<String>), usize>,
    grants: Vec<GrantAcc>,
    grant_index: HashMap<String, usize>,
    events: Vec<PendingEvent>,
    /// Requests with a task but neither grant nor user, by task: placed at the end, under
    /// the task's user when the grants of the task name one.
    loose: Vec<(String, u64, UsageAcc)>,
    loose_index: HashMap<String, usize>,
    unattributed: u64,
    skipped: Skipped,
}

struct TaskAcc {
    task_id: Option<String>,
    first: u64,
    no_grant: Option<(u64, UsageAcc)>,
}

struct GrantAcc {
    id: String,
    sub: Option<String>,
    parent: Option<String>,
    act: Vec<String>,
    user: Option<String>,
    task: Option<String>,
    first: u64,
    /// The task it is shown under, when the filter matches it.
    shown_in: Option<usize>,
    usage: UsageAcc,
}

#[derive(Default)]
struct UsageAcc {
    credentials: Vec<Credential>,
    requests: Vec<Request>,
}

impl UsageAcc {
    fn credential(&mut self, name: String, id: Option<String>, line: u64) -> &mut Credential {
        let at = match self
            .credentials
            .iter()
            .position(|c| c.credential == name && c.credential_id == id)
        {
            Some(at) => at,
            None => {
                self.credentials.push(Credential {
                    credential: name,
                    credential_id: id,
                    events: Vec::new(),
                    requests: Vec::new(),
                    first: line,
                });
                self.credentials.len() - 1
            }
        };
        let credential = &mut self.credentials[at];
        credential.first = credential.first.min(line);
        credential
    }

    fn add(&mut self, credential: Option<(String, Option<String>)>, request: Request) {
        match credential {
            Some((name, id)) => self
                .credential(name, id, request.line)
                .requests
                .push(request),
            None => self.requests.push(request),
        }
    }

    /// Takes in `other`'s requests and credentials, keeping file order.
    fn merge(&mut self, other: UsageAcc) {
        for mut theirs in other.credentials {
            let mine = self.credential(theirs.credential, theirs.credential_id, theirs.first);
            mine.events.append(&mut theirs.events);
            mine.requests.append(&mut theirs.requests);
            mine.requests.sort_by_key(|r| r.line);
        }
        self.requests.extend(other.requests);
        self.requests.sort_by_key(|r| r.line);
    }

    fn finish(mut self) -> Usage {
        // Events are attached after every request was read: put each credential back where it
        // first appeared, which may be its `issued` event, before its first request.
        self.credentials.sort_by_key(|c| c.first);
        Usage {
            credentials: self.credentials,
            requests: self.requests,
        }
    }
}

struct PendingEvent {
    line: u64,
    grant_id: String,
    credential: String,
    credential_id: Option<String>,
    event: Event,
}

/// A string field; an empty string counts as absent.
fn text(record: &Map<String, Value>, key: &str) -> Option<String> {
    record
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn number(record: &Map<String, Value>, key: &str) -> Option<u64> {
    record.get(key).and_then(Value::as_u64)
}

impl Builder {
    pub fn new(filter: Filter) -> Self {
        Builder {
            filter,
            line: 0,
            users: Vec::new(),
            user_index: HashMap::new(),
            tasks: Vec::new(),
            task_index: HashMap::new(),
            grants: Vec::new(),
            grant_index: HashMap::new(),
            events: Vec::new(),
            loose: Vec::new(),
            loose_index: HashMap::new(),
            unattributed: 0,
            skipped: Skipped::default(),
        }
    }

    /// One line of the trail (its line ending included or not). Blank lines are ignored.
    pub fn line(&mut self, line: &str) {
        self.line += 1;
        if line.trim().is_empty() {
            return;
        }
        let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else {
            self.skipped.not_json += 1;
            return;
        };
        match record.get("type").and_then(Value::as_str) {
            Some("request") => self.request(&record),
            Some("credential") => self.credential_event(&record),
            other => self.skipped.count_type(other.unwrap_or("")),
        }
    }

    /// A line that is not text.
    pub fn not_json(&mut self) {
        self.line += 1;
        self.skipped.not_json += 1;
    }

    fn request(&mut self, record: &Map<String, Value>) {
        let request = Request {
            ts: text(record, "ts"),
            request_id: text(record, "request_id"),
            method: text(record, "method"),
            scheme: text(record, "scheme"),
            host: text(record, "host"),
            port: number(record, "port"),
            path: text(record, "path"),
            decision: text(record, "decision"),
            status: number(record, "status"),
            code: text(record, "code"),
            error: text(record, "error"),
            line: self.line,
        };
        let credential = text(record, "credential").map(|c| (c, text(record, "credential_id")));
        let user = text(record, "on_behalf_of");
        let task = text(record, "task_id");
        if let Some(grant_id) = text(record, "grant_id") {
            let at = match self.grant_index.get(&grant_id) {
                Some(&at) => at,
                None => {
                    // A grant is placed by its first request: it names one task and one user.
                    let shown_in = self
                        .filter
                        .matches(user.as_deref(), task.as_deref())
                        .then(|| self.task(user.clone(), task.clone(), self.line));
                    let act = match record.get("act") {
                        Some(Value::Array(act)) => act
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    };
                    self.grants.push(GrantAcc {
                        id: grant_id.clone(),
                        sub: text(record, "sub"),
                        parent: text(record, "parent_grant"),
                        act,
                        user,
                        task,
                        first: self.line,
                        shown_in,
                        usage: UsageAcc::default(),
                    });
                    self.grant_index.insert(grant_id, self.grants.len() - 1);
                    self.grants.len() - 1
                }
            };
            let grant = &mut self.grants[at];
            if grant.shown_in.is_some() {
                grant.usage.add(credential, request);
            }
        } else if let Some(task) = task {
            let line = self.line;
            if user.is_some() {
                if self.filter.matches(user.as_deref(), Some(&task)) {
                    let at = self.task(user, Some(task), line);
                    self.tasks[at]
                        .no_grant
                        .get_or_insert_with(|| (line, UsageAcc::default()))
                        .1
                        .add(credential, request);
                }
            } else if self.filter.matches_task(Some(&task)) {
                // Without a grant, nothing names the user: the task's grants will.
                let at = match self.loose_index.get(&task) {
                    Some(&at) => at,
                    None => {
                        self.loose_index.insert(task.clone(), self.loose.len());
                        self.loose.push((task, line, UsageAcc::default()));
                        self.loose.len() - 1
                    }
                };
                self.loose[at].2.add(credential, request);
            }
        } else {
            self.unattributed += 1;
        }
    }

    /// The task node of `(user, task)`, made (with its user's) on first use; `line` is where
    /// something of it appears.
    fn task(&mut self, user: Option<String>, task: Option<String>, line: u64) -> usize {
        let key = (user, task);
        if let Some(&at) = self.task_index.get(&key) {
            let task = &mut self.tasks[at];
            task.first = task.first.min(line);
            return at;
        }
        let (user, task_id) = key.clone();
        self.tasks.push(TaskAcc {
            task_id,
            first: line,
            no_grant: None,
        });
        let at = self.tasks.len() - 1;
        self.task_index.insert(key, at);
        match self.user_index.get(&user) {
            Some(&u) => self.users[u].1.push(at),
            None => {
                self.user_index.insert(user.clone(), self.users.len());
                self.users.push((user, vec![at]));
            }
        }
        at
    }

    fn credential_event(&mut self, record: &Map<String, Value>) {
        let Some(grant_id) = text(record, "grant_id") else {
            self.skipped.credential_without_grant += 1;
            return;
        };
        // Held until the end: a credential is usually issued before the first request of the
        // grant it is issued for, so the grant is not known yet.
        self.events.push(PendingEvent {
            line: self.line,
            grant_id,
            credential: text(record, "credential").unwrap_or_default(),
            credential_id: text(record, "credential_id"),
            event: Event {
                event: text(record, "event").unwrap_or_default(),
                ts: text(record, "ts"),
            },
        });
    }

    pub fn finish(mut self) -> Trace {
        for pending in std::mem::take(&mut self.events) {
            let Some(&at) = self.grant_index.get(&pending.grant_id) else {
                self.skipped.credential_unknown_grant += 1;
                continue;
            };
            let grant = &mut self.grants[at];
            if grant.shown_in.is_some() {
                grant
                    .usage
                    .credential(pending.credential, pending.credential_id, pending.line)
                    .events
                    .push(pending.event);
            }
        }

        // Each task's user, if its grants agree on one (`None` when they do not).
        let mut user_of: HashMap<&str, Option<&Option<String>>> = HashMap::new();
        for grant in &self.grants {
            if let Some(task) = grant.task.as_deref() {
                user_of
                    .entry(task)
                    .and_modify(|user| {
                        if *user != Some(&grant.user) {
                            *user = None;
                        }
                    })
                    .or_insert(Some(&grant.user));
            }
        }
        let user_of: HashMap<String, Option<String>> = user_of
            .into_iter()
            .map(|(task, user)| (task.to_string(), user.cloned().flatten()))
            .collect();
        for (task, first, usage) in std::mem::take(&mut self.loose) {
            // Under the task's user, or apart under no user when its grants do not name one.
            let user = user_of.get(&task).cloned().flatten();
            if !self.filter.matches(user.as_deref(), Some(&task)) {
                continue;
            }
            let at = self.task(user, Some(task), first);
            match &mut self.tasks[at].no_grant {
                Some((mine, acc)) => {
                    *mine = (*mine).min(first);
                    acc.merge(usage);
                }
                none => *none = Some((first, usage)),
            }
        }
        // Tasks made above appear where their first line is.
        let first_of = |tasks: &[TaskAcc], at: &[usize]| {
            at.iter().map(|&t| tasks[t].first).min().unwrap_or(u64::MAX)
        };
        for (_, at) in &mut self.users {
            at.sort_by_key(|&t| self.tasks[t].first);
        }
        self.users.sort_by_key(|(_, at)| first_of(&self.tasks, at));

        let places = self.places();
        // Children of each grant and the top-level grants of each task, in file order (grants
        // are numbered in the order they first appear).
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.grants.len()];
        let mut roots: Vec<Vec<usize>> = vec![Vec::new(); self.tasks.len()];
        for (at, grant) in self.grants.iter().enumerate() {
            let Some(task) = grant.shown_in else { continue };
            match places[at] {
                Place::Under(parent) => children[parent].push(at),
                _ => roots[task].push(at),
            }
        }
        let mut grants: Vec<Option<GrantAcc>> = self.grants.into_iter().map(Some).collect();
        let mut tasks: Vec<Option<Task>> = self
            .tasks
            .into_iter()
            .zip(roots)
            .map(|(task, roots)| {
                let (no_grant_first, no_grant) = match task.no_grant {
                    Some((first, usage)) => (first, Some(usage.finish())),
                    None => (0, None),
                };
                Some(Task {
                    task_id: task.task_id,
                    agents: roots
                        .into_iter()
                        .filter_map(|at| agent(at, &mut grants, &children, &places))
                        .collect(),
                    no_grant,
                    no_grant_first,
                })
            })
            .collect();
        let users = self
            .users
            .into_iter()
            .map(|(user, at)| User {
                user,
                tasks: at.into_iter().filter_map(|at| tasks[at].take()).collect(),
            })
            .collect();
        Trace {
            users,
            unattributed_requests: self.filter.is_empty().then_some(self.unattributed),
            skipped: self.skipped,
        }
    }

    /// Where each grant goes. Parents are nested in the same task only, loops are broken and
    /// depth is capped, so that what is nested is a tree of at most [`MAX_DEPTH`] levels.
    fn places(&self) -> Vec<Place> {
        let mut places: Vec<Place> = self
            .grants
            .iter()
            .map(|grant| {
                let (Some(_), Some(parent)) = (grant.shown_in, grant.parent.as_ref()) else {
                    return Place::Root;
                };
                let Some(&at) = self.grant_index.get(parent) else {
                    return Place::Apart(Link::NotInFile);
                };
                let other = &self.grants[at];
                if other.shown_in.is_some() && other.shown_in == grant.shown_in {
                    Place::Under(at)
                } else {
                    Place::Apart(Link::Elsewhere {
                        user: other.user.clone(),
                        task_id: other.task.clone(),
                    })
                }
            })
            .collect();
        let under = |places: &[Place], at: usize| match places[at] {
            Place::Under(parent) => Some(parent),
            _ => None,
        };

        // Loops: walk up from each grant in file order. While a loop is whole, the first of
        // its grants to be walked from meets itself: it is cut off and shown at task level,
        // the rest of the loop under it.
        for at in 0..places.len() {
            let mut seen = HashSet::new();
            let mut up = under(&places, at);
            while let Some(parent) = up {
                if parent == at {
                    places[at] = Place::Apart(Link::Cycle);
                    break;
                }
                if !seen.insert(parent) {
                    break; // a loop above, not through this grant: cut when its turn comes
                }
                up = under(&places, parent);
            }
        }

        // Depth: each grant's from its ancestors' (memoized, no recursion); one deeper than
        // MAX_DEPTH starts again at task level.
        let mut depth: Vec<Option<usize>> = vec![None; places.len()];
        for at in 0..places.len() {
            // The ancestors whose depth is not known yet, nearest first.
            let mut path = Vec::new();
            let mut cur = at;
            while depth[cur].is_none() {
                path.push(cur);
                match under(&places, cur) {
                    Some(parent) => cur = parent,
                    None => break,
                }
            }
            let mut above = path
                .last()
                .and_then(|&top| under(&places, top))
                .and_then(|parent| depth[parent]);
            for &node in path.iter().rev() {
                let mut mine = match (under(&places, node), above) {
                    (Some(_), Some(d)) => d + 1,
                    _ => 0,
                };
                if mine > MAX_DEPTH {
                    places[node] = Place::Apart(Link::TooDeep);
                    mine = 0;
                }
                depth[node] = Some(mine);
                above = Some(mine);
            }
        }
        places
    }
}

/// Where a grant goes in its task.
#[derive(Debug, Clone)]
enum Place {
    /// At task level, with no parent (or not shown at all).
    Root,
    /// Under the grant of this index.
    Under(usize),
    /// At task level although it has a parent, for this reason.
    Apart(Link),
}

/// The [`Agent`] of grant `at`, with its sub-agents (depth bounded by [`Builder::places`]).
fn agent(
    at: usize,
    grants: &mut [Option<GrantAcc>],
    children: &[Vec<usize>],
    places: &[Place],
) -> Option<Agent> {
    let grant = grants[at].take()?;
    let parent = grant.parent.and_then(|grant_id| {
        let link = match &places[at] {
            Place::Root => return None,
            Place::Under(_) => Link::Nested,
            Place::Apart(link) => link.clone(),
        };
        Some(Parent { grant_id, link })
    });
    Some(Agent {
        grant_id: grant.id,
        sub: grant.sub,
        parent,
        act: grant.act,
        usage: grant.usage.finish(),
        agents: children[at]
            .iter()
            .filter_map(|&child| agent(child, grants, children, places))
            .collect(),
        first: grant.first,
    })
}

/// The tree as one JSON document (pretty-printed: it is read by people as often as by `jq`).
pub fn render_json(trace: &Trace) -> serde_json::Result<String> {
    let mut json = serde_json::to_string_pretty(trace)?;
    json.push('\n');
    Ok(json)
}

/// The tree as text, one node a line, with box-drawing branches.
pub fn render_text(trace: &Trace) -> String {
    let mut out = String::new();
    for (i, user) in trace.users.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let node = Node {
            label: match &user.user {
                Some(user) => format!("user {user}"),
                None => "(no user)".to_string(),
            },
            children: user.tasks.iter().map(task_node).collect(),
        };
        node.write(&mut out);
    }
    if let Some(n) = trace.unattributed_requests.filter(|&n| n > 0) {
        if !trace.users.is_empty() {
            out.push('\n');
        }
        let requests = if n == 1 { "request" } else { "requests" };
        out.push_str(&format!(
            "{n} {requests} with neither task nor grant (not listed)\n"
        ));
    }
    out
}

struct Node {
    label: String,
    children: Vec<Node>,
}

impl Node {
    fn write(&self, out: &mut String) {
        out.push_str(&self.label);
        out.push('\n');
        self.write_children(out, &mut String::new());
    }

    fn write_children(&self, out: &mut String, prefix: &mut String) {
        for (i, child) in self.children.iter().enumerate() {
            let last = i + 1 == self.children.len();
            out.push_str(prefix);
            out.push_str(if last { "└─ " } else { "├─ " });
            out.push_str(&child.label);
            out.push('\n');
            let len = prefix.len();
            prefix.push_str(if last { "   " } else { "│  " });
            child.write_children(out, prefix);
            prefix.truncate(len);
        }
    }
}

fn task_node(task: &Task) -> Node {
    let mut children: Vec<(u64, Node)> = task
        .agents
        .iter()
        .map(|agent| (agent.first, agent_node(agent)))
        .collect();
    if let Some(usage) = &task.no_grant {
        children.push((
            task.no_grant_first,
            Node {
                label: "(no grant)".to_string(),
                children: usage_nodes(usage, Vec::new()),
            },
        ));
    }
    children.sort_by_key(|(first, _)| *first);
    Node {
        label: match &task.task_id {
            Some(task) => format!("task {task}"),
            None => "(no task)".to_string(),
        },
        children: children.into_iter().map(|(_, node)| node).collect(),
    }
}

fn agent_node(agent: &Agent) -> Node {
    let mut about = format!("grant {}", agent.grant_id);
    if let Some(parent) = &agent.parent {
        let p = &parent.grant_id;
        match &parent.link {
            Link::Nested => about.push_str(&format!(", from {p}")),
            Link::NotInFile => about.push_str(&format!(", parent {p} not in this file")),
            Link::Elsewhere { user, task_id } => {
                let task = task_id.as_deref().unwrap_or("(no task)");
                let user = user.as_deref().unwrap_or("(no user)");
                about.push_str(&format!(", parent {p} in task {task} of user {user}"));
            }
            Link::Cycle => about.push_str(&format!(", parent {p}: a cycle")),
            Link::TooDeep => about.push_str(&format!(", parent {p} nested too deep")),
        }
    }
    // Where the tree does not show the chain of delegators, say it.
    let shown_by_tree = agent
        .parent
        .as_ref()
        .is_some_and(|p| p.link == Link::Nested);
    if !shown_by_tree && !agent.act.is_empty() {
        about.push_str(&format!(", act {}", agent.act.join(" → ")));
    }
    let sub = agent.sub.as_deref().unwrap_or("(no sub)");
    let subs = agent
        .agents
        .iter()
        .map(|a| (a.first, agent_node(a)))
        .collect();
    Node {
        label: format!("agent {sub}  ({about})"),
        children: usage_nodes(&agent.usage, subs),
    }
}

/// Credentials, requests without one, and `more` (sub-agents), in file order.
fn usage_nodes(usage: &Usage, more: Vec<(u64, Node)>) -> Vec<Node> {
    let mut nodes: Vec<(u64, Node)> = more;
    for credential in &usage.credentials {
        nodes.push((credential.first, credential_node(credential)));
    }
    for request in &usage.requests {
        nodes.push((request.line, request_node(request)));
    }
    nodes.sort_by_key(|(first, _)| *first);
    nodes.into_iter().map(|(_, node)| node).collect()
}

fn credential_node(credential: &Credential) -> Node {
    let mut about: Vec<String> = credential
        .events
        .iter()
        .map(|e| format!("{} {}", e.event, time_of_day(e.ts.as_deref())))
        .collect();
    match credential.requests.len() {
        0 => {}
        1 => about.push("1 request".to_string()),
        n => about.push(format!("{n} requests")),
    }
    let id = credential.credential_id.as_deref().unwrap_or("(none)");
    let mut label = format!("credential {}  id={id}", credential.credential);
    if !about.is_empty() {
        label.push_str(&format!("  ({})", about.join(", ")));
    }
    Node {
        label,
        children: credential.requests.iter().map(request_node).collect(),
    }
}

fn request_node(r: &Request) -> Node {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_string());
    let host = dash(&r.host);
    let default_port = match r.scheme.as_deref() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let method = dash(&r.method);
    // A CONNECT names host:port and has no path; elsewhere the port shows when not the
    // scheme's own.
    let target = match (method.as_str(), r.port) {
        ("CONNECT", Some(port)) => format!("{host}:{port}"),
        (_, Some(port)) if Some(port) != default_port => {
            format!("{host}:{port} {}", r.path.as_deref().unwrap_or(""))
        }
        _ => format!("{host} {}", r.path.as_deref().unwrap_or("")),
    };
    let status = match (r.status, &r.code) {
        (Some(s), Some(code)) => format!("{s} {code}"),
        (Some(s), None) => s.to_string(),
        (None, Some(code)) => code.clone(),
        (None, None) => "-".to_string(),
    };
    let mut label = format!(
        "{} {method} {}  {status}  {}",
        time_of_day(r.ts.as_deref()),
        target.trim_end(),
        dash(&r.decision)
    );
    if let Some(error) = &r.error {
        label.push_str(&format!("  {error}"));
    }
    Node {
        label,
        children: Vec::new(),
    }
}

/// `12:00:01.123` of `2026-05-04T12:00:01.123Z`: the tree is read within one task, which is
/// short; the JSON output keeps the whole timestamp. Anything else is shown as it is.
fn time_of_day(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "-".to_string();
    };
    match ts.split_once('T') {
        Some((_, time)) => time
            .split(['Z', 'z', '+', '-'])
            .next()
            .unwrap_or(time)
            .to_string(),
        None => ts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trace(lines: &[Value], filter: Filter) -> Trace {
        let mut builder = Builder::new(filter);
        for line in lines {
            builder.line(&line.to_string());
        }
        builder.finish()
    }

    fn tree_text(lines: &[Value]) -> String {
        render_text(&trace(lines, Filter::default()))
    }

    /// A request record as the proxy writes one; `extra` adds or replaces fields.
    fn request(ts: &str, path: &str, extra: Value) -> Value {
        let mut line = json!({
            "ts": format!("2026-05-04T{ts}Z"), "type": "request", "request_id": "r",
            "listener": "forward", "route": "github", "credential": "github",
            "credential_id": "c1", "issuer": "local", "method": "GET", "scheme": "https",
            "host": "api.github.com", "port": 443, "path": path, "decision": "allow",
            "code": null, "status": 200, "bytes_in": 0, "bytes_out": 10, "duration_ms": 1.0,
            "task_id": null, "error": null,
        });
        for (k, v) in extra.as_object().unwrap() {
            line[k] = v.clone();
        }
        line
    }

    fn grant(task: &str, sub: &str, id: &str, parent: Option<&str>, act: &[&str]) -> Value {
        let mut g = json!({ "task_id": task, "sub": sub, "grant_id": id, "on_behalf_of": "alice" });
        if let Some(p) = parent {
            g["parent_grant"] = json!(p);
        }
        if !act.is_empty() {
            g["act"] = json!(act);
        }
        g
    }

    fn merge(mut a: Value, b: Value) -> Value {
        for (k, v) in b.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    }

    #[test]
    fn nests_sub_agents_under_the_grant_they_were_derived_from() {
        let lines = [
            request(
                "12:00:01.000",
                "/a",
                grant("t-1", "planner", "g1", None, &[]),
            ),
            request(
                "12:00:02.000",
                "/b",
                grant("t-1", "coder", "g2", Some("g1"), &["planner"]),
            ),
            request(
                "12:00:03.000",
                "/c",
                grant("t-1", "tester", "g3", Some("g2"), &["planner", "coder"]),
            ),
            request(
                "12:00:04.000",
                "/d",
                grant("t-1", "planner", "g1", None, &[]),
            ),
        ];
        assert_eq!(
            tree_text(&lines),
            "\
user alice
└─ task t-1
   └─ agent planner  (grant g1)
      ├─ credential github  id=c1  (2 requests)
      │  ├─ 12:00:01.000 GET api.github.com /a  200  allow
      │  └─ 12:00:04.000 GET api.github.com /d  200  allow
      └─ agent coder  (grant g2, from g1)
         ├─ credential github  id=c1  (1 request)
         │  └─ 12:00:02.000 GET api.github.com /b  200  allow
         └─ agent tester  (grant g3, from g2)
            └─ credential github  id=c1  (1 request)
               └─ 12:00:03.000 GET api.github.com /c  200  allow
"
        );
    }

    #[test]
    fn a_parent_that_appears_after_its_child_still_nests_it() {
        let lines = [
            request(
                "12:00:01.000",
                "/b",
                grant("t-1", "coder", "g2", Some("g1"), &[]),
            ),
            request(
                "12:00:02.000",
                "/a",
                grant("t-1", "planner", "g1", None, &[]),
            ),
        ];
        let t = trace(&lines, Filter::default());
        let agents = &t.users[0].tasks[0].agents;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].grant_id, "g1");
        assert_eq!(agents[0].agents[0].grant_id, "g2");
    }

    #[test]
    fn a_grant_whose_parent_is_missing_or_elsewhere_is_shown_at_task_level() {
        let lines = [
            request(
                "12:00:01.000",
                "/a",
                grant("t-1", "coder", "g2", Some("g0"), &["planner"]),
            ),
            request(
                "12:00:02.000",
                "/b",
                grant("t-2", "planner", "g5", None, &[]),
            ),
            request(
                "12:00:03.000",
                "/c",
                grant("t-1", "fixer", "g6", Some("g5"), &[]),
            ),
        ];
        assert_eq!(
            tree_text(&lines),
            "\
user alice
├─ task t-1
│  ├─ agent coder  (grant g2, parent g0 not in this file, act planner)
│  │  └─ credential github  id=c1  (1 request)
│  │     └─ 12:00:01.000 GET api.github.com /a  200  allow
│  └─ agent fixer  (grant g6, parent g5 in task t-2 of user alice)
│     └─ credential github  id=c1  (1 request)
│        └─ 12:00:03.000 GET api.github.com /c  200  allow
└─ task t-2
   └─ agent planner  (grant g5)
      └─ credential github  id=c1  (1 request)
         └─ 12:00:02.000 GET api.github.com /b  200  allow
"
        );
    }

    #[test]
    fn requests_without_grant_go_under_their_task_or_are_counted() {
        let denied = json!({"credential": null, "credential_id": null, "decision": "deny",
            "status": 403, "code": "host_not_allowed", "host": "evil.example", "method": "POST"});
        let lines = [
            request(
                "12:00:01.000",
                "/x",
                merge(denied.clone(), json!({"task_id": "t-1"})),
            ),
            request("12:00:02.000", "/y", denied.clone()),
            request("12:00:03.000", "/z", json!({"task_id": "t-1"})),
            request("12:00:04.000", "/w", denied),
        ];
        assert_eq!(
            tree_text(&lines),
            "\
(no user)
└─ task t-1
   └─ (no grant)
      ├─ 12:00:01.000 POST evil.example /x  403 host_not_allowed  deny
      └─ credential github  id=c1  (1 request)
         └─ 12:00:03.000 GET api.github.com /z  200  allow

2 requests with neither task nor grant (not listed)
"
        );
    }

    #[test]
    fn requests_without_grant_join_their_task_under_the_user_its_grants_name() {
        let no_grant = json!({"task_id": "t-1", "credential": null, "host": "pypi.org"});
        let lines = [
            request("12:00:01.000", "/simple/", no_grant.clone()),
            request(
                "12:00:02.000",
                "/a",
                grant("t-1", "planner", "g1", None, &[]),
            ),
            request(
                "12:00:03.000",
                "/b",
                merge(
                    grant("t-2", "planner", "g2", None, &[]),
                    json!({"on_behalf_of": "bob"}),
                ),
            ),
            request(
                "12:00:04.000",
                "/c",
                grant("t-2", "planner", "g3", None, &[]),
            ),
            request(
                "12:00:05.000",
                "/simple/",
                merge(no_grant, json!({"task_id": "t-2"})),
            ),
        ];
        // t-1's grants name alice: its request without a grant is hers. t-2's name alice and
        // bob: that one is nobody's.
        let want_alice = "\
user alice
├─ task t-1
│  ├─ (no grant)
│  │  └─ 12:00:01.000 GET pypi.org /simple/  200  allow
│  └─ agent planner  (grant g1)
│     └─ credential github  id=c1  (1 request)
│        └─ 12:00:02.000 GET api.github.com /a  200  allow
└─ task t-2
   └─ agent planner  (grant g3)
      └─ credential github  id=c1  (1 request)
         └─ 12:00:04.000 GET api.github.com /c  200  allow
";
        assert_eq!(
            tree_text(&lines),
            format!(
                "{want_alice}
user bob
└─ task t-2
   └─ agent planner  (grant g2)
      └─ credential github  id=c1  (1 request)
         └─ 12:00:03.000 GET api.github.com /b  200  allow

(no user)
└─ task t-2
   └─ (no grant)
      └─ 12:00:05.000 GET pypi.org /simple/  200  allow
"
            )
        );
        let alice = Filter {
            task: None,
            user: Some("alice".into()),
        };
        assert_eq!(render_text(&trace(&lines, alice)), want_alice);
    }

    #[test]
    fn credential_events_of_a_grant_annotate_its_credential_in_file_order() {
        let issued = |grant: Option<&str>, id: &str| {
            let mut e = json!({"ts": "2026-05-04T11:59:59.500Z", "type": "credential",
                "event": "issued", "credential": "github", "issuer": "local",
                "credential_id": id, "expires_at": null, "error": null});
            if let Some(g) = grant {
                e["grant_id"] = json!(g);
                e["task_id"] = json!("t-1");
            }
            e
        };
        let lines = [
            issued(None, "c0"),
            issued(Some("g1"), "c1"),
            issued(Some("g9"), "c9"),
            request(
                "12:00:01.000",
                "/a",
                merge(
                    grant("t-1", "planner", "g1", None, &[]),
                    json!({"credential": null, "credential_id": null, "decision": "deny",
                        "status": 403, "code": "path_not_allowed"}),
                ),
            ),
            request(
                "12:00:02.000",
                "/b",
                grant("t-1", "planner", "g1", None, &[]),
            ),
        ];
        let t = trace(&lines, Filter::default());
        assert_eq!(
            render_text(&t),
            "\
user alice
└─ task t-1
   └─ agent planner  (grant g1)
      ├─ credential github  id=c1  (issued 11:59:59.500, 1 request)
      │  └─ 12:00:02.000 GET api.github.com /b  200  allow
      └─ 12:00:01.000 GET api.github.com /a  403 path_not_allowed  deny
"
        );
        assert_eq!(
            t.skipped.summary().as_deref(),
            Some(
                "skipped 1 credential event without grant_id, \
                 1 credential event of a grant with no request in this file"
            )
        );
    }

    #[test]
    fn filters_by_task_and_user_and_names_a_parent_left_out() {
        let lines = [
            request(
                "12:00:01.000",
                "/a",
                grant("t-1", "planner", "g1", None, &[]),
            ),
            request(
                "12:00:02.000",
                "/b",
                merge(
                    grant("t-2", "coder", "g2", Some("g1"), &["planner"]),
                    json!({"on_behalf_of": "bob"}),
                ),
            ),
            request("12:00:03.000", "/c", json!({})),
        ];
        let by_task = trace(
            &lines,
            Filter {
                task: Some("t-2".into()),
                user: None,
            },
        );
        assert_eq!(
            render_text(&by_task),
            "\
user bob
└─ task t-2
   └─ agent coder  (grant g2, parent g1 in task t-1 of user alice, act planner)
      └─ credential github  id=c1  (1 request)
         └─ 12:00:02.000 GET api.github.com /b  200  allow
"
        );
        assert_eq!(by_task.unattributed_requests, None);
        let by_user = trace(
            &lines,
            Filter {
                task: None,
                user: Some("alice".into()),
            },
        );
        assert_eq!(by_user.users.len(), 1);
        assert_eq!(by_user.users[0].tasks[0].task_id.as_deref(), Some("t-1"));
        let nobody = trace(
            &lines,
            Filter {
                task: Some("t-2".into()),
                user: Some("alice".into()),
            },
        );
        assert!(nobody.users.is_empty());
    }

    #[test]
    fn loops_of_parents_are_cut_and_depth_is_bounded() {
        let mut lines = vec![
            request(
                "12:00:01.000",
                "/a",
                grant("t-1", "a", "ga", Some("gb"), &[]),
            ),
            request(
                "12:00:02.000",
                "/b",
                grant("t-1", "b", "gb", Some("ga"), &[]),
            ),
            request(
                "12:00:03.000",
                "/s",
                grant("t-1", "s", "gs", Some("gs"), &[]),
            ),
        ];
        let t = trace(&lines, Filter::default());
        let agents = &t.users[0].tasks[0].agents;
        assert_eq!(agents.len(), 2, "{agents:#?}");
        assert_eq!(agents[0].grant_id, "ga");
        assert_eq!(agents[0].parent.as_ref().unwrap().link, Link::Cycle);
        assert_eq!(agents[0].agents[0].grant_id, "gb");
        assert_eq!(agents[1].grant_id, "gs");
        assert_eq!(agents[1].parent.as_ref().unwrap().link, Link::Cycle);

        // A chain of 3 × (MAX_DEPTH + 1) grants: three trees of MAX_DEPTH + 1 levels.
        lines.clear();
        let n = 3 * (MAX_DEPTH + 1);
        for i in 0..n {
            let parent = (i > 0).then(|| format!("d{}", i - 1));
            lines.push(request(
                "12:00:00.000",
                "/",
                grant("t-1", "x", &format!("d{i}"), parent.as_deref(), &[]),
            ));
        }
        let t = trace(&lines, Filter::default());
        let roots = &t.users[0].tasks[0].agents;
        assert_eq!(roots.len(), 3);
        for (k, root) in roots.iter().enumerate() {
            assert_eq!(root.grant_id, format!("d{}", k * (MAX_DEPTH + 1)));
            let mut levels = 1;
            let mut node = root;
            while let Some(child) = node.agents.first() {
                levels += 1;
                node = child;
            }
            assert_eq!(levels, MAX_DEPTH + 1);
        }
        assert_eq!(
            roots[1].parent.as_ref().unwrap().link,
            Link::TooDeep,
            "{:?}",
            roots[1].parent
        );
    }

    #[test]
    fn a_grant_without_a_task_is_under_no_task() {
        let mut no_task = grant("t", "planner", "g1", None, &[]);
        no_task["task_id"] = Value::Null;
        let lines = [request("12:00:01.000", "/a", no_task)];
        assert_eq!(
            tree_text(&lines),
            "\
user alice
└─ (no task)
   └─ agent planner  (grant g1)
      └─ credential github  id=c1  (1 request)
         └─ 12:00:01.000 GET api.github.com /a  200  allow
"
        );
    }

    #[test]
    fn counts_what_is_not_a_request_or_credential_record() {
        let mut builder = Builder::new(Filter::default());
        builder.line("not json");
        builder.line("[1, 2]");
        builder.line("");
        builder.line(r#"{"type":"config","event":"loaded"}"#);
        builder.line(r#"{"type":"config","event":"reloaded"}"#);
        builder.line(r#"{"no":"type"}"#);
        builder.not_json();
        let t = builder.finish();
        assert!(t.users.is_empty());
        assert_eq!(
            t.skipped.summary().as_deref(),
            Some(
                "skipped 3 lines that are not JSON records, 2 \"config\" records, \
                 1 \"untyped\" record"
            )
        );
        assert_eq!(render_text(&t), "");
    }

    #[test]
    fn shows_connect_targets_ports_errors_and_odd_timestamps() {
        let lines = [
            request(
                "12:00:01.000",
                "",
                json!({"task_id": "t", "method": "CONNECT", "credential": null,
                    "status": null, "code": "host_not_allowed", "decision": "deny"}),
            ),
            request(
                "12:00:02.000",
                "/p?q=REDACTED",
                json!({"task_id": "t", "credential": null, "port": 8443,
                    "error": "client_aborted", "ts": "yesterday"}),
            ),
        ];
        assert_eq!(
            tree_text(&lines),
            "\
(no user)
└─ task t
   └─ (no grant)
      ├─ 12:00:01.000 CONNECT api.github.com:443  host_not_allowed  deny
      └─ yesterday GET api.github.com:8443 /p?q=REDACTED  200  allow  client_aborted
"
        );
    }

    #[test]
    fn json_output_has_the_same_tree() {
        let lines = [
            request(
                "12:00:01.000",
                "/a",
                grant("t-1", "planner", "g1", None, &[]),
            ),
            request(
                "12:00:02.000",
                "/b",
                merge(
                    grant("t-1", "coder", "g2", Some("g1"), &["planner"]),
                    json!({"credential": null}),
                ),
            ),
        ];
        let t = trace(&lines, Filter::default());
        let doc = serde_json::to_value(&t).unwrap();
        assert_eq!(
            doc,
            json!({
                "users": [{"user": "alice", "tasks": [{"task_id": "t-1", "agents": [{
                    "grant_id": "g1", "sub": "planner", "act": [],
                    "credentials": [{"credential": "github", "credential_id": "c1",
                        "events": [], "requests": [{
                            "ts": "2026-05-04T12:00:01.000Z", "request_id": "r",
                            "method": "GET", "scheme": "https", "host": "api.github.com",
                            "port": 443, "path": "/a", "decision": "allow", "status": 200,
                            "code": null, "error": null}]}],
                    "requests": [],
                    "agents": [{
                        "grant_id": "g2", "sub": "coder",
                        "parent": {"grant_id": "g1", "link": "nested"},
                        "act": ["planner"], "credentials": [],
                        "requests": [{
                            "ts": "2026-05-04T12:00:02.000Z", "request_id": "r",
                            "method": "GET", "scheme": "https", "host": "api.github.com",
                            "port": 443, "path": "/b", "decision": "allow", "status": 200,
                            "code": null, "error": null}],
                        "agents": []}]}]}]}],
                "unattributed_requests": 0
            })
        );
    }

    #[test]
    fn reads_what_the_writer_writes() {
        use crate::{AuditWriter, CredentialEvent, CredentialEventKind, Outcome, RequestRecord};
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        let sink = Sink::default();
        let writer = AuditWriter::spawn(Box::new(sink.clone())).unwrap();
        let log = writer.log();
        log.credential(&CredentialEvent {
            event: CredentialEventKind::Issued,
            credential: "github".into(),
            issuer: "local".into(),
            credential_id: Some("c1".into()),
            expires_at: None,
            error: None,
            task_id: Some("t-1".into()),
            grant_id: Some("g1".into()),
            issuer_ms: None,
        });
        let record =
            |sub: &str, grant: &str, parent: Option<&str>, act: Vec<String>| RequestRecord {
                route: Some("github".into()),
                credential: Some("github".into()),
                credential_id: Some("c1".into()),
                issuer: Some("local".into()),
                decision: Outcome::Allow,
                status: Some(200),
                bytes_out: 1,
                duration_ms: 1.0,
                task_id: Some("t-1".into()),
                sub: Some(sub.into()),
                grant_id: Some(grant.into()),
                parent_grant: parent.map(str::to_string),
                on_behalf_of: Some("alice".into()),
                act,
                ..RequestRecord::new(
                    crate::RequestId::of(1),
                    "forward",
                    "GET".into(),
                    ("https", "api.github.com".into(), 443),
                    "/repos".into(),
                )
            };
        log.request(&record("planner", "g1", None, vec![]));
        log.request(&record("coder", "g2", Some("g1"), vec!["planner".into()]));
        writer.shutdown();
        let bytes = sink.0.lock().unwrap().clone();
        let t = read(&bytes[..], Filter::default()).unwrap();
        let planner = &t.users[0].tasks[0].agents[0];
        assert_eq!(t.users[0].user.as_deref(), Some("alice"));
        assert_eq!(t.users[0].tasks[0].task_id.as_deref(), Some("t-1"));
        assert_eq!(planner.sub.as_deref(), Some("planner"));
        assert_eq!(planner.usage.credentials[0].requests.len(), 1);
        let request = &planner.usage.credentials[0].requests[0];
        assert_eq!(request.method.as_deref(), Some("GET"));
        assert_eq!(request.host.as_deref(), Some("api.github.com"));
        assert_eq!(request.path.as_deref(), Some("/repos"));
        assert_eq!(request.status, Some(200));
        assert_eq!(request.decision.as_deref(), Some("allow"));
        assert!(request.ts.as_deref().is_some_and(|ts| ts.ends_with('Z')));
        let coder = &planner.agents[0];
        assert_eq!(coder.grant_id, "g2");
        assert_eq!(coder.act, ["planner"]);
        // A per-task credential's events name its grant: they go under it.
        assert_eq!(planner.usage.credentials[0].events.len(), 1);
        assert_eq!(t.skipped.credential_without_grant, 0);
    }

    #[test]
    fn read_counts_lines_that_are_not_utf8() {
        let input = b"\xff\xfe\n{\"type\":\"config\"}\n";
        let t = read(&input[..], Filter::default()).unwrap();
        assert_eq!(t.skipped.not_json, 1);
        assert_eq!(t.skipped.types, [("config".to_string(), 1)]);
    }
}
