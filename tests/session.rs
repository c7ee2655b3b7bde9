//! The Session service through the real server and the generated client:
//! expiry (absolute, idle, touch) on the injected clock, rotation and
//! revocation, listing, concurrency, indistinguishable token failures, no
//! token at rest or in logs, namespace ownership, limits, and the CLI.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tierkv::api::convert::{json_from_proto, json_to_proto};
use tierkv::proto::v1 as pb;
use tierkv::session::NOT_FOUND_MESSAGE;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

const BINARY: &str = env!("CARGO_BIN_EXE_tierkv");
const MINUTE: Duration = Duration::from_secs(60);

type Sessions = SessionServiceClient<Channel>;

async fn sessions(server: &TestServer) -> Sessions {
    connect_sessions(&server.server.endpoint()).await
}

fn secs(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn object(value: serde_json::Value) -> prost_types::Struct {
    match json_to_proto(value).kind {
        Some(prost_types::value::Kind::StructValue(object)) => object,
        other => panic!("not an object: {other:?}"),
    }
}

fn data_json(session: &pb::Session) -> serde_json::Value {
    json_from_proto(prost_types::Value {
        kind: Some(prost_types::value::Kind::StructValue(
            session.data.clone().unwrap_or_default(),
        )),
    })
    .unwrap()
}

fn millis(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    let at = timestamp.as_ref().expect("timestamp set");
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

fn create_request(user_id: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        user_id: user_id.to_string(),
        ..Default::default()
    }
}

async fn create(client: &mut Sessions, request: pb::CreateSessionRequest) -> pb::Session {
    client.create(request).await.expect("create").into_inner()
}

async fn get_session(client: &mut Sessions, token: &str) -> Result<pb::Session, Status> {
    client
        .get(pb::GetSessionRequest {
            token: token.to_string(),
            touch: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn touch(client: &mut Sessions, token: &str) -> Result<pb::Session, Status> {
    client
        .touch(pb::TouchSessionRequest {
            token: token.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn rotate(client: &mut Sessions, token: &str) -> Result<pb::Session, Status> {
    client
        .rotate(pb::RotateSessionRequest {
            token: token.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn update(
    client: &mut Sessions,
    token: &str,
    patch: serde_json::Value,
    if_version: Option<u64>,
) -> Result<pb::Session, Status> {
    client
        .update(pb::UpdateSessionRequest {
            token: token.to_string(),
            data: Some(object(patch)),
            if_version,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn revoke(client: &mut Sessions, session: pb::revoke_session_request::Session) -> bool {
    client
        .revoke(pb::RevokeSessionRequest {
            session: Some(session),
        })
        .await
        .expect("revoke")
        .into_inner()
        .revoked
}

async fn list(client: &mut Sessions, user_id: &str, page_size: i32) -> Vec<pb::Session> {
    let mut sessions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_by_user(pb::ListSessionsByUserRequest {
                user_id: user_id.to_string(),
                page_size,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        sessions.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return sessions;
        }
        page_token = page.next_page_token;
    }
}

fn ids(sessions: &[pb::Session]) -> HashSet<String> {
    sessions.iter().map(|s| s.session_id.clone()).collect()
}

/// The one failure every bad token gets: NOT_FOUND with the same message.
#[track_caller]
fn assert_not_found(result: Result<pb::Session, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
    assert_eq!(status.message(), NOT_FOUND_MESSAGE, "{what}");
}

#[track_caller]
fn assert_invalid(result: Result<pb::Session, Status>, needles: &[&str]) {
    let status = result.expect_err("invalid argument");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
    }
}

/// A session lives exactly its TTL on the injected clock; creation reports
/// the times and a token, and the default TTL is 24 hours.
#[tokio::test]
async fn absolute_expiry() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let created = create(
        &mut client,
        pb::CreateSessionRequest {
            ttl: Some(secs(60)),
            data: Some(object(json!({"cart": [1, 2]}))),
            metadata: Some(object(json!({"device": "phone"}))),
            ..create_request("alice")
        },
    )
    .await;
    assert!(!created.token.is_empty());
    assert_eq!(
        millis(&created.expire_time) - millis(&created.create_time),
        60_000
    );
    assert_eq!(created.idle_expire_time, None);

    let got = get_session(&mut client, &created.token).await.unwrap();
    assert_eq!(got.token, "", "Get never returns the token");
    assert_eq!(got.session_id, created.session_id);
    assert_eq!(got.user_id, "alice");
    assert_eq!(data_json(&got), json!({"cart": [1, 2]}));
    assert_eq!(got.metadata, Some(object(json!({"device": "phone"}))));

    server.clock.advance(Duration::from_secs(59));
    assert!(get_session(&mut client, &created.token).await.is_ok());
    server.clock.advance(Duration::from_secs(1));
    assert_not_found(get_session(&mut client, &created.token).await, "expired");
    assert!(list(&mut client, "alice", 0).await.is_empty());

    let default = create(&mut client, create_request("bob")).await;
    assert_eq!(
        millis(&default.expire_time) - millis(&default.create_time),
        24 * 3600 * 1000
    );
    server.stop().await;
}

/// Without touches a session ends after its idle timeout; a touch slides the
/// idle expiry forward.
#[tokio::test]
async fn idle_expiry_and_sliding_touch() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let idle = pb::CreateSessionRequest {
        ttl: Some(secs(3600)),
        idle_timeout: Some(secs(600)),
        ..create_request("alice")
    };
    let untouched = create(&mut client, idle.clone()).await;
    assert_eq!(
        millis(&untouched.idle_expire_time) - millis(&untouched.create_time),
        600_000
    );
    let touched = create(&mut client, idle).await;

    server.clock.advance(6 * MINUTE);
    let after_touch = touch(&mut client, &touched.token).await.unwrap();
    assert_eq!(
        millis(&after_touch.idle_expire_time) - millis(&after_touch.last_seen_time),
        600_000
    );
    assert!(get_session(&mut client, &untouched.token).await.is_ok());

    server.clock.advance(5 * MINUTE); // 11 minutes after creation
    assert_not_found(get_session(&mut client, &untouched.token).await, "idle");
    assert!(get_session(&mut client, &touched.token).await.is_ok());
    assert_eq!(ids(&list(&mut client, "alice", 0).await).len(), 1);

    server.clock.advance(5 * MINUTE); // 10 minutes after the touch
    assert_not_found(
        get_session(&mut client, &touched.token).await,
        "idle after touch",
    );
    assert!(list(&mut client, "alice", 0).await.is_empty());
    server.stop().await;
}

/// Touching never extends a session past its absolute lifetime.
#[tokio::test]
async fn touch_is_bounded_by_the_absolute_lifetime() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let created = create(
        &mut client,
        pb::CreateSessionRequest {
            ttl: Some(secs(600)),
            idle_timeout: Some(secs(240)),
            ..create_request("alice")
        },
    )
    .await;
    for _ in 0..3 {
        server.clock.advance(3 * MINUTE);
        let touched = touch(&mut client, &created.token).await.unwrap();
        assert!(millis(&touched.idle_expire_time) <= millis(&created.expire_time));
        assert_eq!(touched.expire_time, created.expire_time);
    }
    // At 9 minutes the idle expiry (13) is capped at the absolute one (10).
    let last = get_session(&mut client, &created.token).await.unwrap();
    assert_eq!(last.idle_expire_time, created.expire_time);
    server.clock.advance(MINUTE);
    assert_not_found(touch(&mut client, &created.token).await, "absolute");
    server.stop().await;
}

/// Within the touch interval a touch writes nothing: the version and
/// last_seen_time stay; after it, one write moves both.
#[tokio::test]
async fn touch_writes_at_most_once_per_interval() {
    let server = start_with(|config| config.session.touch_interval_secs = 60).await;
    let mut client = sessions(&server).await;
    let created = create(
        &mut client,
        pb::CreateSessionRequest {
            idle_timeout: Some(secs(3600)),
            ..create_request("alice")
        },
    )
    .await;
    server.clock.advance(Duration::from_secs(10));
    let within = touch(&mut client, &created.token).await.unwrap();
    assert_eq!(within.version, created.version);
    assert_eq!(within.last_seen_time, created.last_seen_time);
    let via_get = client
        .get(pb::GetSessionRequest {
            token: created.token.clone(),
            touch: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_get.version, created.version);

    server.clock.advance(Duration::from_secs(50));
    let due = touch(&mut client, &created.token).await.unwrap();
    assert!(due.version > created.version);
    assert_eq!(
        millis(&due.last_seen_time) - millis(&created.create_time),
        60_000
    );
    for _ in 0..5 {
        let again = touch(&mut client, &created.token).await.unwrap();
        assert_eq!(again.version, due.version);
    }
    server.stop().await;
}

/// Rotation gives a new token for the same session; the old one stops at once.
#[tokio::test]
async fn rotation_invalidates_the_old_token() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let created = create(&mut client, create_request("alice")).await;
    let rotated = rotate(&mut client, &created.token).await.unwrap();
    assert_ne!(rotated.token, created.token);
    assert!(!rotated.token.is_empty());
    assert_eq!(rotated.session_id, created.session_id);
    assert_not_found(get_session(&mut client, &created.token).await, "old token");
    assert_not_found(rotate(&mut client, &created.token).await, "rotate old");
    assert_not_found(
        update(&mut client, &created.token, json!({"a": 1}), None).await,
        "update old",
    );
    assert_eq!(
        get_session(&mut client, &rotated.token)
            .await
            .unwrap()
            .session_id,
        created.session_id
    );
    server.stop().await;
}

/// Revoking by token and by id ends the session; revoking again is a no-op.
#[tokio::test]
async fn revoke_by_token_and_by_id() {
    use pb::revoke_session_request::Session as Target;
    let server = start().await;
    let mut client = sessions(&server).await;
    let first = create(&mut client, create_request("alice")).await;
    let second = create(&mut client, create_request("alice")).await;

    assert!(revoke(&mut client, Target::Token(first.token.clone())).await);
    assert_not_found(get_session(&mut client, &first.token).await, "revoked");
    assert!(!revoke(&mut client, Target::Token(first.token.clone())).await);
    assert_eq!(
        ids(&list(&mut client, "alice", 0).await),
        HashSet::from([second.session_id.clone()])
    );

    assert!(revoke(&mut client, Target::SessionId(second.session_id.clone())).await);
    assert_not_found(
        get_session(&mut client, &second.token).await,
        "revoked by id",
    );
    assert!(!revoke(&mut client, Target::SessionId(second.session_id.clone())).await);
    assert!(list(&mut client, "alice", 0).await.is_empty());

    let bad = client
        .revoke(pb::RevokeSessionRequest {
            session: Some(Target::SessionId("nope".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

/// Listing shows exactly a user's live sessions, paged and without tokens,
/// even for user ids with `/` and `%`; revoke-all ends all but the kept one
/// and leaves other users alone.
#[tokio::test]
async fn list_and_revoke_all() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(create(&mut client, create_request("alice")).await);
    }
    let mut tricky = Vec::new();
    for _ in 0..2 {
        tricky.push(create(&mut client, create_request("alice/%2F")).await);
    }
    let short = create(
        &mut client,
        pb::CreateSessionRequest {
            ttl: Some(secs(5)),
            ..create_request("alice")
        },
    )
    .await;
    create(&mut client, create_request("alic")).await;

    let listed = list(&mut client, "alice", 2).await;
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|session| session.token.is_empty()));
    assert!(listed.iter().all(|session| session.user_id == "alice"));
    server.clock.advance(Duration::from_secs(6));
    let live = list(&mut client, "alice", 0).await;
    assert_eq!(ids(&live), ids(&alice));
    assert!(!ids(&live).contains(&short.session_id));
    assert_eq!(ids(&list(&mut client, "alice/%2F", 0).await), ids(&tricky));

    let kept = alice[0].session_id.clone();
    let revoked = client
        .revoke_all_for_user(pb::RevokeAllForUserRequest {
            user_id: "alice".into(),
            except_session_id: kept.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked, 4);
    assert_eq!(
        ids(&list(&mut client, "alice", 0).await),
        HashSet::from([kept])
    );
    assert!(get_session(&mut client, &alice[0].token).await.is_ok());
    for session in &alice[1..] {
        assert_not_found(
            get_session(&mut client, &session.token).await,
            "revoked by all",
        );
    }
    assert_eq!(list(&mut client, "alice/%2F", 0).await.len(), 2);
    assert_eq!(list(&mut client, "alic", 0).await.len(), 1);

    let everything = client
        .revoke_all_for_user(pb::RevokeAllForUserRequest {
            user_id: "alice".into(),
            except_session_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(everything, 1);
    assert!(list(&mut client, "alice", 0).await.is_empty());
    server.stop().await;
}

/// 1,000 concurrent creates give 1,000 distinct tokens and ids, each working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_yield_distinct_working_tokens() {
    let server = start().await;
    let client = sessions(&server).await;
    let mut tasks = JoinSet::new();
    for n in 0..1000 {
        let mut client = client.clone();
        tasks.spawn(async move {
            create(&mut client, create_request(&format!("user{}", n % 10))).await
        });
    }
    let created: Vec<pb::Session> = tasks.join_all().await;
    let tokens: HashSet<&str> = created.iter().map(|s| s.token.as_str()).collect();
    assert_eq!(tokens.len(), 1000);
    assert_eq!(ids(&created).len(), 1000);

    let mut checks = JoinSet::new();
    for session in created {
        let mut client = client.clone();
        checks.spawn(async move {
            let got = get_session(&mut client, &session.token)
                .await
                .expect("token works");
            assert_eq!(got.session_id, session.session_id);
        });
    }
    checks.join_all().await;
    let mut client = client;
    assert_eq!(list(&mut client, "user3", 0).await.len(), 100);
    server.stop().await;
}

/// 100 concurrent updates of different fields all land; an explicit stale
/// `if_version` is refused with ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_lose_no_field() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let created = create(
        &mut client,
        pb::CreateSessionRequest {
            data: Some(object(json!({"keep": true}))),
            ..create_request("alice")
        },
    )
    .await;
    let mut tasks = JoinSet::new();
    for n in 0..100 {
        let mut client = client.clone();
        let token = created.token.clone();
        tasks.spawn(async move {
            update(&mut client, &token, json!({ format!("field{n}"): n }), None)
                .await
                .expect("update")
        });
    }
    tasks.join_all().await;
    let after = get_session(&mut client, &created.token).await.unwrap();
    let data = data_json(&after);
    assert_eq!(data["keep"], json!(true));
    for n in 0..100 {
        assert_eq!(data[format!("field{n}")], json!(n), "field{n}");
    }

    let stale = update(
        &mut client,
        &created.token,
        json!({"x": 1}),
        Some(created.version),
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let fresh = update(
        &mut client,
        &created.token,
        json!({"keep": null, "nested": {"a": 1}}),
        Some(after.version),
    )
    .await
    .unwrap();
    let data = data_json(&fresh);
    assert!(data.get("keep").is_none());
    assert_eq!(data["nested"], json!({"a": 1}));
    server.stop().await;
}

crate::rocksdb_only! {
    "pauses the RocksDB writer thread to order the race (a local-only test hook)";
    /// An Update whose session is revoked between its read and its write answers
    /// NOT_FOUND, as it would a moment later, not ABORTED with a "current version
    /// 0" that never existed. The writer is paused so that the Revoke's delete is
    /// queued first and both commit in one group, deterministically.
    #[tokio::test]
    async fn an_update_racing_a_revoke_is_not_found() {
        let server = start().await;
        let mut client = sessions(&server).await;
        for if_version in [true, false] {
            let created = create(&mut client, create_request("racer")).await;
            let engine = server.rocks();
            let pause = engine.pause_writer();
            let queued = engine.queued_write_bytes();
            let mut revoker = client.clone();
            let token = created.token.clone();
            let revoked = tokio::spawn(async move {
                revoke(
                    &mut revoker,
                    pb::revoke_session_request::Session::Token(token),
                )
                .await
            });
            while engine.queued_write_bytes() == queued {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let queued = engine.queued_write_bytes();
            let mut updater = client.clone();
            let token = created.token.clone();
            let version = if_version.then_some(created.version);
            let updated = tokio::spawn(async move {
                update(&mut updater, &token, json!({"late": true}), version).await
            });
            while engine.queued_write_bytes() == queued {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(pause);
            assert!(revoked.await.unwrap(), "the revoke commits first");
            let status = updated.await.unwrap().unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "if_version {if_version}: {status:?}"
            );
        }
        server.stop().await;
    }
}

/// A made-up token, tokens of the wrong shape, a wrong secret, an expired, a
/// revoked and a rotated-away token all fail the same way on every call.
#[tokio::test]
async fn every_bad_token_fails_the_same_way() {
    let server = start().await;
    let mut client = sessions(&server).await;
    let expired = create(
        &mut client,
        pb::CreateSessionRequest {
            ttl: Some(secs(1)),
            ..create_request("alice")
        },
    )
    .await;
    server.clock.advance(Duration::from_secs(2));
    let revoked = create(&mut client, create_request("alice")).await;
    revoke(
        &mut client,
        pb::revoke_session_request::Session::Token(revoked.token.clone()),
    )
    .await;
    let live = create(&mut client, create_request("alice")).await;
    let rotated_away = create(&mut client, create_request("alice")).await;
    rotate(&mut client, &rotated_away.token).await.unwrap();

    let (live_id, live_secret) = live.token.split_once('.').unwrap();
    let made_up = tierkv::session::token::issue().token.into_exposed();
    let wrong_secret = format!("{live_id}.{}", made_up.split_once('.').unwrap().1);
    let bad_tokens = vec![
        made_up,
        wrong_secret,
        String::new(),
        "x".into(),
        "a.b".into(),
        live_id.to_string(),
        live_secret.to_string(),
        format!("{}x", live.token),
        format!("{}.{}", live.token, live_secret),
        "é".repeat(300),
        expired.token.clone(),
        revoked.token.clone(),
        rotated_away.token.clone(),
    ];
    for token in &bad_tokens {
        assert_not_found(get_session(&mut client, token).await, token);
        assert_not_found(touch(&mut client, token).await, token);
        assert_not_found(
            update(&mut client, token, json!({"a": 1}), None).await,
            token,
        );
        assert_not_found(rotate(&mut client, token).await, token);
    }
    assert!(get_session(&mut client, &live.token).await.is_ok());
    server.stop().await;
}

fn read_all_files(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(read_all_files(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

crate::rocksdb_only! {
    "reads the RocksDB data directory's files";
    /// After a flush, no byte of the data directory holds a token or its secret
    /// (only a hash is stored), yet the tokens still work after a restart.
    #[tokio::test]
    async fn database_files_contain_no_token() {
        let server = start().await;
        let mut client = sessions(&server).await;
        let user = format!("user-{}", tierkv::session::token::issue().session_id);
        let mut tokens = Vec::new();
        for n in 0..20 {
            let created = create(&mut client, create_request(&user)).await;
            tokens.push(created.token.clone());
            if n % 4 == 0 {
                tokens.push(rotate(&mut client, &created.token).await.unwrap().token);
            }
        }
        drop(client);
        let server = server.restart().await;
        let bytes = read_all_files(&server.data_dir());
        assert!(
            contains(&bytes, &user),
            "control: plain session data is visible to this scan"
        );
        for token in &tokens {
            let secret = token.split_once('.').unwrap().1;
            assert!(!contains(&bytes, token), "a token is stored");
            assert!(!contains(&bytes, secret), "a token's secret is stored");
        }
        let mut client = sessions(&server).await;
        let last = tokens.last().unwrap();
        assert!(get_session(&mut client, last).await.is_ok());
        server.stop().await;
    }
}

/// Starts the real binary with verbose logs and collects its stderr lines.
fn spawn_logged_server(
    data_dir: &std::path::Path,
) -> (std::process::Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("TIERKV_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tierkv");
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&lines);
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                if json["message"] == "serving" {
                    if let Some(addr) = json["addr"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = addr_tx.send(addr);
                    }
                }
            }
            collected.lock().unwrap().push(line);
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server announces its address");
    (child, addr, lines)
}

crate::rocksdb_only! {
    "runs the tierkv binary over a RocksDB data directory (tests/replicas_etcd.rs runs it over etcd)";
    /// With every log level on, nothing the server logs holds a token or a
    /// secret, while session ids are logged.
    #[tokio::test]
    async fn server_log_contains_no_token() {
        use pb::revoke_session_request::Session as Target;
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr, lines) = spawn_logged_server(dir.path());
        let mut client = connect_sessions(&format!("http://{addr}")).await;
        let mut tokens = Vec::new();
        let first = create(&mut client, create_request("alice")).await;
        tokens.push(first.token.clone());
        get_session(&mut client, &first.token).await.unwrap();
        touch(&mut client, &first.token).await.unwrap();
        update(&mut client, &first.token, json!({"a": 1}), None)
            .await
            .unwrap();
        let rotated = rotate(&mut client, &first.token).await.unwrap();
        tokens.push(rotated.token.clone());
        assert!(get_session(&mut client, &first.token).await.is_err());
        assert!(
            update(&mut client, &rotated.token, json!({"a": 1}), Some(1))
                .await
                .is_err()
        );
        list(&mut client, "alice", 0).await;
        let second = create(&mut client, create_request("alice")).await;
        tokens.push(second.token.clone());
        revoke(&mut client, Target::Token(second.token.clone())).await;
        assert!(get_session(&mut client, &second.token).await.is_err());
        client
            .revoke_all_for_user(pb::RevokeAllForUserRequest {
                user_id: "alice".into(),
                except_session_id: String::new(),
            })
            .await
            .unwrap();
        assert!(get_session(&mut client, &rotated.token).await.is_err());
        drop(client);
        // Let the log thread drain, then stop the server.
        tokio::time::sleep(Duration::from_millis(200)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = lines.lock().unwrap().join("\n");
        assert!(
            log.contains(&first.session_id),
            "control: session ids are logged"
        );
        for token in &tokens {
            let secret = token.split_once('.').unwrap().1;
            assert!(!log.contains(secret), "a token's secret is in the log");
        }
    }
}

/// KvService cannot read, write, delete or list the Session service's keys,
/// and a listing of everything leaves them out.
#[tokio::test]
async fn kv_service_cannot_reach_session_keys() {
    let mut server = start().await;
    let mut sessions_client = sessions(&server).await;
    let created = create(&mut sessions_client, create_request("alice")).await;
    let record_key = format!("session:s/{}", created.session_id);
    let index_key = format!("session:u/alice/{}", created.session_id);
    let kv = &mut server.client;
    kv.put(put_text("user:1", "v")).await.unwrap();
    kv.put(put_text("sessionx", "v")).await.unwrap();

    #[track_caller]
    fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>) {
        let status = result.expect_err("denied");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("tierkv.v1.SessionService"),
            "{}",
            status.message()
        );
    }
    for key in [&record_key, &index_key, &"session:forged".to_string()] {
        assert_denied(kv.get(get(key)).await);
        assert_denied(kv.put(put_text(key, "forged")).await);
        assert_denied(
            kv.delete(pb::DeleteRequest {
                key: key.clone(),
                if_version: None,
            })
            .await,
        );
    }
    assert_denied(
        kv.batch_get(pb::BatchGetRequest {
            keys: vec!["user:1".into(), record_key.clone()],
            r#type: 0,
            fallback: None,
        })
        .await,
    );
    assert_denied(
        kv.batch_write(pb::BatchWriteRequest {
            mutations: vec![
                pb::Mutation {
                    operation: Some(pb::mutation::Operation::Put(put_text("user:2", "v"))),
                },
                pb::Mutation {
                    operation: Some(pb::mutation::Operation::Delete(pb::DeleteRequest {
                        key: index_key.clone(),
                        if_version: None,
                    })),
                },
            ],
        })
        .await,
    );
    assert!(
        !exists(kv, "user:2").await,
        "the refused batch wrote nothing"
    );
    for prefix in ["session:", "session:u/alice/", "session:s/"] {
        assert_denied(
            kv.list(pb::ListRequest {
                prefix: prefix.into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await,
        );
    }
    for prefix in ["", "s", "session"] {
        let names = list_all(kv, prefix, 1).await;
        assert!(
            names.iter().all(|name| !name.starts_with("session:")),
            "{prefix:?}: {names:?}"
        );
        if prefix.is_empty() {
            assert!(names.contains(&"user:1".to_string()), "{names:?}");
        }
        assert!(names.contains(&"sessionx".to_string()), "{names:?}");
    }
    assert!(get_session(&mut sessions_client, &created.token)
        .await
        .is_ok());
    server.stop().await;
}

/// Sizes and durations outside their limits are refused with
/// INVALID_ARGUMENT naming the limit and the actual value.
#[tokio::test]
async fn limits_name_the_limit_and_the_actual_size() {
    let server = start_with(|config| {
        config.session.max_data_bytes = 100;
        config.session.max_metadata_bytes = 50;
        config.session.max_ttl_secs = 7200;
        config.session.default_ttl_secs = 3600;
    })
    .await;
    let mut client = sessions(&server).await;
    let result = client.create(create_request(&"u".repeat(129))).await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["user_id is 129 bytes", "128"],
    );
    let result = client.create(create_request("")).await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["user_id must not be empty"],
    );
    let big = json!({"blob": "x".repeat(200)});
    let result = client
        .create(pb::CreateSessionRequest {
            data: Some(object(big.clone())),
            ..create_request("alice")
        })
        .await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["data is 211 bytes", "limit is 100"],
    );
    let result = client
        .create(pb::CreateSessionRequest {
            metadata: Some(object(big)),
            ..create_request("alice")
        })
        .await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["metadata is 211 bytes", "limit is 50"],
    );
    let result = client
        .create(pb::CreateSessionRequest {
            ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            ..create_request("alice")
        })
        .await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["ttl is 0.5s", "minimum is 1s"],
    );
    let result = client
        .create(pb::CreateSessionRequest {
            ttl: Some(secs(7201)),
            ..create_request("alice")
        })
        .await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["ttl is 7201s", "maximum is 7200s"],
    );
    let result = client
        .create(pb::CreateSessionRequest {
            idle_timeout: Some(secs(-3)),
            ..create_request("alice")
        })
        .await;
    assert_invalid(
        result.map(|r| r.into_inner()),
        &["idle_timeout is -3s", "minimum is 1s"],
    );

    let created = create(&mut client, create_request("alice")).await;
    let grown = update(
        &mut client,
        &created.token,
        json!({"blob": "x".repeat(200)}),
        None,
    )
    .await;
    assert_invalid(grown, &["after the patch", "limit is 100"]);
    assert_eq!(
        data_json(&get_session(&mut client, &created.token).await.unwrap()),
        json!({})
    );
    let page = client
        .list_by_user(pb::ListSessionsByUserRequest {
            user_id: "alice".into(),
            page_size: 5000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(page.code(), Code::InvalidArgument);
    server.stop().await;
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(endpoint: &str, args: &[&str], stdin: Option<String>) -> Outcome {
    let args: Vec<String> = std::iter::once("session")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let endpoint = endpoint.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BINARY)
            .args(&args)
            .env("TIERKV_ENDPOINT", endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tierkv");
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).unwrap();
            }
        }
        let output = child.wait_with_output().unwrap();
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn parse(outcome: &Outcome) -> serde_json::Value {
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    serde_json::from_str(&outcome.stdout).expect("JSON output")
}

/// `tierkv session …`: create, get (also with the token on stdin), update,
/// rotate, list without tokens, revoke-all, and exit code 1 on a dead token.
#[tokio::test]
async fn command_line() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    let created = parse(
        &cli(
            endpoint,
            &[
                "create",
                "alice",
                "--ttl",
                "3600",
                "--idle",
                "600",
                "--data",
                r#"{"a":1}"#,
            ],
            None,
        )
        .await,
    );
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["data"], json!({"a": 1}));
    assert!(created["expire_time"].as_str().unwrap().ends_with('Z'));

    let got = parse(&cli(endpoint, &["get", "-"], Some(format!("{token}\n"))).await);
    assert_eq!(got["session_id"], created["session_id"]);
    assert!(got.get("token").is_none());

    let updated = parse(&cli(endpoint, &["update", &token, r#"{"b":2}"#], None).await);
    assert_eq!(updated["data"], json!({"a": 1, "b": 2}));
    let touched = parse(&cli(endpoint, &["touch", &token], None).await);
    assert_eq!(touched["session_id"], created["session_id"]);

    let rotated = parse(&cli(endpoint, &["rotate", &token], None).await);
    let new_token = rotated["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    let dead = cli(endpoint, &["get", &token], None).await;
    assert_eq!(dead.code, 1, "{}", dead.stderr);
    assert!(dead.stderr.contains(NOT_FOUND_MESSAGE));

    let listed = parse(&cli(endpoint, &["list", "alice"], None).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("token").is_none());
    let revoked = parse(&cli(endpoint, &["revoke-all", "alice"], None).await);
    assert_eq!(revoked, json!({"revoked": 1}));
    assert_eq!(cli(endpoint, &["get", &new_token], None).await.code, 1);
    // A token starting with `-` is a token, not an option (before or after
    // the command's own flags): unknown here, so exit code 1, not a usage error.
    let hyphen = "-AAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for args in [
        &["get", hyphen][..],
        &["get", "--touch", hyphen],
        &["get", hyphen, "--touch"],
    ] {
        let outcome = cli(endpoint, args, None).await;
        assert_eq!(outcome.code, 1, "{args:?}: {}", outcome.stderr);
    }

    let bad = cli(endpoint, &["create", "alice", "--data", "[1]"], None).await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("JSON object"), "{}", bad.stderr);
    server.stop().await;
}

/// A client that reads the largest message the server sends.
async fn large_sessions(server: &TestServer) -> Sessions {
    sessions(server)
        .await
        .max_decoding_message_size(tierkv::server::message_limits::MAX_MESSAGE_BYTES)
}

/// Lists every session of `user_id`, page by page, checking each reply
/// against the response limit; returns the pages' session ids.
async fn list_all_within_limit(client: &mut Sessions, user_id: &str) -> Vec<Vec<String>> {
    use prost::Message as _;
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_by_user(pb::ListSessionsByUserRequest {
                user_id: user_id.into(),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("a page is never refused whole")
            .into_inner();
        let bytes = page.encoded_len();
        assert!(
            bytes <= tierkv::kv::limits::MAX_RESPONSE_BYTES,
            "a page of {} sessions is {bytes} bytes",
            page.sessions.len()
        );
        pages.push(page.sessions.iter().map(|s| s.session_id.clone()).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

/// `ListByUser` with `page_size` 1000 over 110 sessions of 1 MB of data
/// each: without a bound the reply is one 110 MB message (more than any
/// client decodes). The page stops before the session that would pass the
/// 100 MiB response limit KvService uses, with a token for the rest, and the
/// pages together hold every session once, in order.
#[tokio::test]
async fn a_listing_page_stops_at_the_response_limit() {
    const SESSIONS: usize = 110;
    let server = start_with(|config| config.session.max_data_bytes = 1024 * 1024).await;
    let mut client = large_sessions(&server).await;
    let blob = "x".repeat(1_000_000);
    let mut created = Vec::new();
    for _ in 0..SESSIONS {
        let mut request = create_request("heavy");
        request.data = Some(object(json!({ "blob": blob })));
        let session = client.create(request).await.expect("create").into_inner();
        created.push(session.session_id);
    }
    created.sort();

    let pages = list_all_within_limit(&mut client, "heavy").await;
    assert!(pages.len() >= 2, "one page of {SESSIONS} sessions");
    assert!(
        pages[0].len() >= 100,
        "the first page stops early: {}",
        pages[0].len()
    );
    let listed: Vec<String> = pages.into_iter().flatten().collect();
    assert_eq!(listed, created);
    server.stop().await;
}

/// `tierkv session list` reads a page over tonic's default 4 MiB decode
/// limit (70 sessions of 60 KB data: about 4.2 MB), as `kv get` reads a
/// 20 MiB value; before, it failed with "decoded message length too large".
#[tokio::test]
async fn command_line_lists_a_page_over_4_mib() {
    const SESSIONS: usize = 70;
    let server = start().await;
    let mut client = sessions(&server).await;
    let blob = "y".repeat(60_000);
    for _ in 0..SESSIONS {
        let mut request = create_request("u70");
        request.data = Some(object(json!({ "blob": blob })));
        create(&mut client, request).await;
    }
    let listed = parse(&cli(&server.server.endpoint(), &["list", "u70"], None).await);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), SESSIONS);
    assert!(listed
        .iter()
        .all(|session| session["data"]["blob"] == json!(blob)));
    server.stop().await;
}
