//! The admin protocol: what a request line may say and what each answer is (documented for
//! operators in `docs/operations.md`, "Admin socket").
//!
//! Two versions are spoken:
//! * **version 1**, a bare word (`stats`, `ping`): the reply is exactly what vgpud sent before
//!   the protocol had versions, so old clients and scripts keep working;
//! * **version 2**, a JSON object naming its version, e.g.
//!   `{"version": 2, "request": "show", "vm": "a"}`: every reply carries `"version": 2`, and
//!   an error also carries a machine-readable `"code"`.
//!
//! Changing requests (`reset`, `set`) reach the router through [`Control`], handed to the
//! admin socket by `main.rs`: the admin layer sits below the router and cannot name it.

use crate::stats::StatsRegistry;
use serde_json::{json, Map, Value};

/// The newest protocol version this vgpud speaks.
pub const PROTOCOL_VERSION: u64 = 2;
/// Highest pool weight (the config's own bound, `[[pool]] weight`).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Longest part of an unknown request echoed back in an error.
const ECHO_CHARS: usize = 64;

/// Why a changing request was not carried out (reported by [`Control`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The VM is configured but not connected: it has no device to reset.
    #[error("VM {0:?} is not connected")]
    NotConnected(String),
    /// The request cannot be carried out now (retry later).
    #[error("busy: {0}")]
    Busy(String),
    /// The new value was refused by the configuration's checks; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// This vgpud cannot do it (e.g. no control path: a unit test's registry).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The change could not be written to the config file; nothing changed.
    #[error("not persisted, nothing changed: {0}")]
    Persist(String),
}

impl ControlError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotConnected(_) => "not_connected",
            Self::Busy(_) => "busy",
            Self::Invalid(_) => "out_of_range",
            Self::Unsupported(_) => "unsupported",
            Self::Persist(_) => "persist_failed",
        }
    }
}

/// What the admin socket may ask of the running mediator; VMs and pools by their index in
/// the configuration (names are resolved, and unknown ones refused, before it is called).
pub trait Control: Send + Sync {
    /// Sets VM `vm`'s priority at run time, as a SIGHUP reload would; with `persist`, also in
    /// the config file (first: if that fails, nothing changes).
    fn set_priority(&self, vm: usize, priority: u32, persist: bool) -> Result<(), ControlError>;
    /// Sets pool `pool`'s weight at run time, as a SIGHUP reload would; `persist` as above.
    fn set_weight(&self, pool: usize, weight: u32, persist: bool) -> Result<(), ControlError>;
    /// Resets VM `vm`'s device as its guest's reset would; returns the new generation.
    fn reset(&self, vm: usize) -> Result<u32, ControlError>;
}

/// A request the protocol knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Is vgpud up.
    Ping,
    /// Every VM's and pool's counters.
    Stats,
    /// One VM's full state.
    Show { vm: String },
    /// Reset one VM's device.
    Reset { vm: String },
    /// A VM's priority.
    SetPriority {
        vm: String,
        priority: u32,
        persist: bool,
    },
    /// A pool's weight.
    SetWeight {
        pool: String,
        weight: u32,
        persist: bool,
    },
}

impl Request {
    /// Whether the request changes vgpud's state (such requests are logged with the peer).
    pub fn changes(&self) -> bool {
        matches!(
            self,
            Self::Reset { .. } | Self::SetPriority { .. } | Self::SetWeight { .. }
        )
    }
}

/// A request that could not be understood; `code` is the reply's `"code"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct BadRequest {
    code: &'static str,
    msg: String,
}

impl BadRequest {
    /// The reply's `"code"`.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

fn bad(code: &'static str, msg: impl Into<String>) -> BadRequest {
    BadRequest {
        code,
        msg: msg.into(),
    }
}

/// `s` cut to [`ECHO_CHARS`] characters (an error never echoes a long request back).
fn echo(s: &str) -> String {
    let shown: String = s.chars().take(ECHO_CHARS).collect();
    if s.chars().count() > ECHO_CHARS {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

/// Parses one request line (UTF-8, trimmed): a bare word is version 1, a JSON object
/// version 2. Returns the version the reply speaks and the request.
pub fn parse(text: &str) -> Result<(u64, Request), (u64, BadRequest)> {
    let text = text.trim();
    if !text.starts_with('{') {
        return match text {
            "stats" => Ok((1, Request::Stats)),
            "ping" => Ok((1, Request::Ping)),
            other => Err((
                1,
                bad(
                    "unknown_request",
                    format!(
                        "unknown request {}; try \"stats\" or \"ping\", or a version {PROTOCOL_VERSION} JSON request",
                        echo(other)
                    ),
                ),
            )),
        };
    }
    let v = PROTOCOL_VERSION;
    let obj: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        (
            v,
            bad("bad_request", format!("request is not a JSON object: {e}")),
        )
    })?;
    let version = match obj.get("version") {
        Some(Value::Number(n)) => n.as_u64(),
        None => None,
        Some(_) => None,
    }
    .ok_or_else(|| {
        (
            v,
            bad(
                "bad_version",
                format!("a JSON request needs \"version\": {PROTOCOL_VERSION}"),
            ),
        )
    })?;
    if version != PROTOCOL_VERSION {
        return Err((
            v,
            bad(
                "bad_version",
                format!(
                    "protocol version {version} is not spoken here; this vgpud speaks 1 (bare \
                     words) and {PROTOCOL_VERSION} (JSON)"
                ),
            ),
        ));
    }
    request_of(&obj).map(|r| (v, r)).map_err(|e| (v, e))
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, BadRequest> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => {
            Err(bad("bad_request", format!("missing \"{key}\" (a name)")))
        }
        Some(other) => Err(bad(
            "bad_request",
            format!(
                "\"{key}\" must be a string, not {}",
                echo(&other.to_string())
            ),
        )),
    }
}

/// A non-negative integer field within `lo..=hi`.
fn u32_field(obj: &Map<String, Value>, key: &str, lo: u32, hi: u32) -> Result<u32, BadRequest> {
    let range = || format!("\"{key}\" must be an integer in {lo}..={hi}");
    let v = obj
        .get(key)
        .ok_or_else(|| bad("bad_request", format!("missing \"{key}\"")))?;
    let n = v.as_u64().ok_or_else(|| {
        bad(
            "out_of_range",
            format!("{}, not {}", range(), echo(&v.to_string())),
        )
    })?;
    if n < lo as u64 || n > hi as u64 {
        return Err(bad("out_of_range", format!("{}, not {n}", range())));
    }
    Ok(n as u32)
}

fn request_of(obj: &Map<String, Value>) -> Result<Request, BadRequest> {
    let what = string_field(obj, "request")?;
    let persist = match obj.get("persist") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(bad("bad_request", "\"persist\" must be true or false")),
    };
    Ok(match what.as_str() {
        "ping" => Request::Ping,
        "stats" => Request::Stats,
        "show" => Request::Show {
            vm: string_field(obj, "vm")?,
        },
        "reset" => Request::Reset {
            vm: string_field(obj, "vm")?,
        },
        "set" => match (obj.get("vm"), obj.get("pool")) {
            (Some(_), None) => Request::SetPriority {
                vm: string_field(obj, "vm")?,
                priority: u32_field(obj, "priority", 0, u32::MAX)?,
                persist,
            },
            (None, Some(_)) => Request::SetWeight {
                pool: string_field(obj, "pool")?,
                weight: u32_field(obj, "weight", 1, MAX_WEIGHT)?,
                persist,
            },
            _ => return Err(bad(
                "bad_request",
                "\"set\" names either a \"vm\" (with \"priority\") or a \"pool\" (with \"weight\")",
            )),
        },
        other => {
            return Err(bad(
                "unknown_request",
                format!(
                    "unknown request {}; known: ping, stats, show, reset, set",
                    echo(other)
                ),
            ))
        }
    })
}

/// An error reply in version `version`.
pub fn error_reply(version: u64, code: &str, msg: &str) -> Value {
    if version < 2 {
        json!({ "error": msg })
    } else {
        json!({ "version": version, "error": msg, "code": code })
    }
}

/// Answers a parsed request. `control` is `None` where nothing may change (then changing
/// requests get an `unsupported` error).
pub fn answer(
    version: u64,
    req: Request,
    stats: &StatsRegistry,
    control: Option<&dyn Control>,
) -> Value {
    if version < 2 {
        // Version 1: the replies vgpud always sent, unchanged.
        return match req {
            Request::Ping => json!({"ok": true}),
            Request::Stats => stats.to_json(),
            _ => error_reply(1, "unknown_request", "unknown request"),
        };
    }
    let vm_index = |name: &str| {
        stats
            .vms
            .iter()
            .position(|(c, _)| c.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = stats.vms.iter().map(|(c, _)| c.name.as_str()).collect();
                (
                    "unknown_vm",
                    format!("no VM named {} (VMs: {})", echo(name), known.join(", ")),
                )
            })
    };
    let result: Result<Value, (&str, String)> = (|| match req {
        Request::Ping => Ok(json!({"ok": true})),
        Request::Stats => Ok(json!({ "stats": stats.to_json() })),
        Request::Show { vm } => {
            let i = vm_index(&vm)?;
            Ok(json!({ "vm": show(stats, i) }))
        }
        Request::Reset { vm } => {
            let i = vm_index(&vm)?;
            let c = control.ok_or(("unsupported", "this vgpud cannot reset VMs".into()))?;
            let generation = c.reset(i).map_err(|e| (e.code(), e.to_string()))?;
            Ok(json!({"ok": true, "vm": vm, "generation": generation}))
        }
        Request::SetPriority {
            vm,
            priority,
            persist,
        } => {
            let i = vm_index(&vm)?;
            let c = control.ok_or(("unsupported", "this vgpud cannot change VMs".into()))?;
            c.set_priority(i, priority, persist)
                .map_err(|e| (e.code(), e.to_string()))?;
            Ok(json!({"ok": true, "vm": vm, "priority": priority, "persisted": persist}))
        }
        Request::SetWeight {
            pool,
            weight,
            persist,
        } => {
            let i = stats
                .pools
                .iter()
                .position(|p| p.name == pool)
                .ok_or_else(|| {
                    let known: Vec<&str> = stats.pools.iter().map(|p| p.name.as_str()).collect();
                    (
                        "unknown_pool",
                        format!(
                            "no pool named {} (pools: {})",
                            echo(&pool),
                            known.join(", ")
                        ),
                    )
                })?;
            let c = control.ok_or(("unsupported", "this vgpud cannot change pools".into()))?;
            c.set_weight(i, weight, persist)
                .map_err(|e| (e.code(), e.to_string()))?;
            Ok(json!({"ok": true, "pool": pool, "weight": weight, "persisted": persist}))
        }
    })();
    match result {
        Ok(Value::Object(mut m)) => {
            m.insert("version".into(), version.into());
            Value::Object(m)
        }
        Ok(other) => other,
        Err((code, msg)) => error_reply(version, code, &msg),
    }
}

/// One VM's full state: its stats entry, with its pool's name and weight.
fn show(stats: &StatsRegistry, vm: usize) -> Value {
    let all = stats.to_json();
    let mut v = all["vms"][vm].clone();
    let pool_id = v["pool_id"].as_u64();
    if let Some(p) = all["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"].as_u64() == pool_id)
    {
        v["pool"] = p["name"].clone();
        v["pool_weight"] = p["weight"].clone();
    }
    v["backend"] = all["backend"].clone();
    if let Some(d) = v["device"].as_u64() {
        v["device_name"] = all["devices"][d as usize].clone();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_bare_words() {
        assert_eq!(parse(" stats\r"), Ok((1, Request::Stats)));
        assert_eq!(parse("ping"), Ok((1, Request::Ping)));
        let (v, e) = parse("reboot").unwrap_err();
        assert_eq!((v, e.code), (1, "unknown_request"));
    }

    #[test]
    fn version_2_is_json() {
        let p = |s: &str| parse(s);
        assert_eq!(
            p(r#"{"version":2,"request":"show","vm":"a"}"#),
            Ok((2, Request::Show { vm: "a".into() }))
        );
        assert_eq!(
            p(r#"{"version":2,"request":"set","vm":"a","priority":7}"#),
            Ok((
                2,
                Request::SetPriority {
                    vm: "a".into(),
                    priority: 7,
                    persist: false
                }
            ))
        );
        assert_eq!(
            p(r#"{"version":2,"request":"set","pool":"p","weight":3,"persist":true}"#),
            Ok((
                2,
                Request::SetWeight {
                    pool: "p".into(),
                    weight: 3,
                    persist: true
                }
            ))
        );
        let code = |s: &str| p(s).unwrap_err().1.code;
        assert_eq!(code(r#"{"request":"ping"}"#), "bad_version");
        assert_eq!(code(r#"{"version":3,"request":"ping"}"#), "bad_version");
        assert_eq!(code(r#"{"version":2,"request":"fly"}"#), "unknown_request");
        assert_eq!(code(r#"{"version":2,"request":"show"}"#), "bad_request");
        assert_eq!(
            code(r#"{"version":2,"request":"set","pool":"p","weight":0}"#),
            "out_of_range"
        );
        assert_eq!(
            code(r#"{"version":2,"request":"set","pool":"p","weight":1000001}"#),
            "out_of_range"
        );
        assert_eq!(
            code(r#"{"version":2,"request":"set","vm":"a","priority":-1}"#),
            "out_of_range"
        );
        assert_eq!(
            code(r#"{"version":2,"request":"set","vm":"a","priority":4294967296}"#),
            "out_of_range"
        );
        assert_eq!(
            code(r#"{"version":2,"request":"set","vm":"a","pool":"p","priority":1}"#),
            "bad_request"
        );
        assert_eq!(code("{not json"), "bad_request");
    }
}
