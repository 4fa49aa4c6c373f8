//! The controller's Kubernetes side against a scripted Kubernetes API server (kube's client over a
//! tower-test mock service): the requests it makes (method, path, labels, immutable Opaque
//! Secret with the key envelope) and how it reads the answers, 404 and 409 included; and the
//! orphan sweep's decisions (which volumes it collects, which it leaves, which it never asks
//! about); the status check's findings and the Events it posts on claims.
#![allow(clippy::unwrap_used)]

use csi_driver::keystore::{
    record_name, KeyStore, Records, SecretStore, StoredVolume, SNAPSHOT_ID_LABEL, VOLUME_ID_LABEL,
};
use csi_driver::volume_id::{VolumeId, KEY_ENVELOPE};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn store() -> (SecretStore, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (SecretStore::new(client, "atefs-system"), handle)
}

/// Answers the next request with `status` and `body`; returns (method, path+query, body).
async fn answer(h: &mut Handle, status: u16, body: Value) -> (String, String, Value) {
    let (req, send) = h.next_request().await.expect("a request");
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    (method, uri, sent)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn volume() -> StoredVolume {
    StoredVolume {
        keys: ate::KeyFile::generate(ate::ChainId::random()),
        capacity: 5 << 30,
        snapshot_of: None,
    }
}

fn secret_json(name: &str, v: &StoredVolume) -> Value {
    secret_json_at(name, v, "2026-01-01T00:00:00Z")
}

fn secret_json_at(name: &str, v: &StoredVolume, created: &str) -> Value {
    use base64_like::encode;
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": record_name(name), "namespace": "atefs-system",
                     "creationTimestamp": created,
                     "labels": {VOLUME_ID_LABEL: v.keys.chain.to_hex()},
                     "annotations": {"csi.atefs.io/volume-name": name}},
        "type": "Opaque",
        "data": {KEY_ENVELOPE: encode(csi_driver::volume_id::envelope_to_hex(&v.keys).to_string().as_bytes()),
                 "capacityBytes": encode(v.capacity.to_string().as_bytes())}
    })
}

/// Standard base64, as the API server sends Secret data (no crate needed for a test).
mod base64_like {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut o = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    o.push('=');
                }
            }
        }
        o
    }
}

#[tokio::test]
async fn create_writes_an_immutable_labelled_secret_and_a_conflict_is_not_an_error() {
    let (s, mut h) = store();
    let v = volume();
    let name = "pvc-0a1b";
    let server = tokio::spawn(async move {
        let first = answer(
            &mut h,
            201,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "atefs-pvc-0a1b"}}),
        )
        .await;
        let second = answer(&mut h, 409, status(409, "AlreadyExists")).await;
        (first, second)
    });
    assert!(s.create(name, &v).await.unwrap(), "created");
    assert!(
        !s.create(name, &v).await.unwrap(),
        "a racing create is reported, not failed"
    );
    let ((method, uri, body), (m2, _, _)) = server.await.unwrap();
    assert_eq!(method, "POST");
    assert_eq!(m2, "POST");
    assert!(
        uri.starts_with("/api/v1/namespaces/atefs-system/secrets"),
        "{uri}"
    );
    assert_eq!(body["metadata"]["name"], "atefs-pvc-0a1b");
    assert_eq!(
        body["metadata"]["labels"][VOLUME_ID_LABEL],
        v.keys.chain.to_hex()
    );
    assert_eq!(body["immutable"], true);
    assert_eq!(body["type"], "Opaque");
    assert_eq!(
        body["stringData"][KEY_ENVELOPE],
        csi_driver::volume_id::envelope_to_hex(&v.keys).to_string()
    );
    assert_eq!(
        body["stringData"]["capacityBytes"],
        (5u64 << 30).to_string()
    );
}

/// Snapshots' records are Secrets of their own: another name, another label (so the orphan
/// sweep and the status checks, which select volume Secrets by label, never see them), their
/// source and time kept and read back.
#[tokio::test]
async fn snapshot_records_are_secrets_of_their_own_with_their_source() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let s = SecretStore::of(
        kube::Client::new(svc, "default"),
        "atefs-system",
        Records::Snapshots,
    );
    let snap = StoredVolume {
        snapshot_of: Some(("00112233445566778899aabbccddeeff".into(), 1_780_000_000)),
        ..volume()
    };
    let name = "snapshot-4c1d";
    let mut stored = secret_json(name, &snap);
    stored["metadata"]["name"] = json!("atefs-snap-snapshot-4c1d");
    stored["metadata"]["annotations"] = json!({"csi.atefs.io/snapshot-name": name});
    stored["data"]["sourceVolumeId"] =
        json!(base64_like::encode(b"00112233445566778899aabbccddeeff"));
    stored["data"]["createdAt"] = json!(base64_like::encode(b"1780000000"));
    let list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                      "items": [{"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "atefs-snap-snapshot-4c1d",
                                              "annotations": {"csi.atefs.io/snapshot-name": name}}}]});
    let mut damaged = stored.clone();
    damaged["metadata"]["annotations"]["csi.atefs.io/snapshot-name"] = json!("snapshot-bad");
    damaged["data"][KEY_ENVELOPE] = json!(base64_like::encode(b"00ff"));
    let everything = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                            "items": [stored.clone(), damaged]});
    let server = tokio::spawn(async move {
        let created = answer(
            &mut h,
            201,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}),
        )
        .await;
        let got = answer(&mut h, 200, stored).await;
        let found = answer(&mut h, 200, list).await;
        let listed = answer(&mut h, 200, everything).await;
        (created, got, found, listed)
    });
    assert!(s.create(name, &snap).await.unwrap());
    let back = s.get(name).await.unwrap().expect("the snapshot");
    assert_eq!(back.snapshot_of, snap.snapshot_of);
    assert_eq!(back.keys.chain, snap.keys.chain);
    assert_eq!(
        s.find(&VolumeId(snap.keys.chain)).await.unwrap().as_deref(),
        Some(name)
    );
    // A record that does not decode is left out of the list, not the list's end.
    let all = s.list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, name);
    assert_eq!(all[0].1.snapshot_of, snap.snapshot_of);
    let ((_, _, body), (_, get_uri, _), (_, find_uri, _), (_, list_uri, _)) = server.await.unwrap();
    assert!(
        list_uri.contains("labelSelector=csi.atefs.io%2Fsnapshot-id"),
        "{list_uri}"
    );
    assert_eq!(body["metadata"]["name"], "atefs-snap-snapshot-4c1d");
    assert_eq!(
        body["metadata"]["labels"][SNAPSHOT_ID_LABEL],
        snap.keys.chain.to_hex()
    );
    assert!(body["metadata"]["labels"].get(VOLUME_ID_LABEL).is_none());
    assert_eq!(
        body["metadata"]["annotations"]["csi.atefs.io/snapshot-name"],
        name
    );
    assert_eq!(
        body["stringData"]["sourceVolumeId"],
        "00112233445566778899aabbccddeeff"
    );
    assert_eq!(body["stringData"]["createdAt"], "1780000000");
    assert_eq!(
        get_uri,
        "/api/v1/namespaces/atefs-system/secrets/atefs-snap-snapshot-4c1d"
    );
    assert!(
        find_uri.contains("labelSelector=csi.atefs.io%2Fsnapshot-id%3D"),
        "{find_uri}"
    );
}

#[tokio::test]
async fn get_reads_the_secret_back_and_absent_is_none() {
    let (s, mut h) = store();
    let v = volume();
    let name = "pvc-77";
    let reply = secret_json(name, &v);
    let server = tokio::spawn(async move {
        let a = answer(&mut h, 200, reply).await;
        let b = answer(&mut h, 404, status(404, "NotFound")).await;
        (a, b)
    });
    let got = s.get(name).await.unwrap().expect("the volume");
    assert_eq!(got.keys.chain, v.keys.chain);
    assert_eq!(got.capacity, v.capacity);
    assert!(s.get("pvc-missing").await.unwrap().is_none());
    let ((m, uri, _), (_, uri2, _)) = server.await.unwrap();
    assert_eq!(m, "GET");
    assert_eq!(uri, "/api/v1/namespaces/atefs-system/secrets/atefs-pvc-77");
    assert_eq!(
        uri2,
        "/api/v1/namespaces/atefs-system/secrets/atefs-pvc-missing"
    );
}

#[tokio::test]
async fn a_damaged_secret_is_an_error_not_a_new_volume() {
    let (s, mut h) = store();
    let v = volume();
    let mut reply = secret_json("pvc-9", &v);
    reply["data"][KEY_ENVELOPE] = json!(base64_like::encode(b"00ff"));
    let server = tokio::spawn(async move { answer(&mut h, 200, reply).await });
    let e = s.get("pvc-9").await.unwrap_err();
    assert!(
        e.to_string().contains("not a valid atefs volume record"),
        "{e}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn find_selects_by_volume_id_label_and_delete_tolerates_absence() {
    let (s, mut h) = store();
    let v = volume();
    let list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                      "items": [secret_json("pvc-5", &v)]});
    let server = tokio::spawn(async move {
        let a = answer(&mut h, 200, list).await;
        let b = answer(&mut h, 404, status(404, "NotFound")).await;
        (a, b)
    });
    let id = VolumeId(v.keys.chain);
    assert_eq!(s.find(&id).await.unwrap().as_deref(), Some("pvc-5"));
    s.delete("pvc-5").await.unwrap();
    let ((m, uri, _), (m2, uri2, _)) = server.await.unwrap();
    assert_eq!(m, "GET");
    assert!(
        uri.contains("labelSelector=csi.atefs.io%2Fvolume-id%3D"),
        "{uri}"
    );
    assert!(uri.contains(&v.keys.chain.to_hex()), "{uri}");
    assert_eq!(m2, "DELETE");
    assert_eq!(
        uri2.trim_end_matches('?'),
        "/api/v1/namespaces/atefs-system/secrets/atefs-pvc-5"
    );
}

#[test]
fn record_names_are_valid_object_names() {
    assert_eq!(record_name("pvc-1234"), "atefs-pvc-1234");
    for odd in ["Upper", "with space", "ünï", &"x".repeat(300), "ends-"] {
        let n = record_name(odd);
        assert!(
            n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{n}"
        );
    }
    assert_ne!(record_name("Upper"), record_name("upper2"));
}

/// Records what it was asked to delete.
#[derive(Default)]
struct Deleted(std::sync::Mutex<Vec<ate::ChainId>>);

#[tonic::async_trait]
impl csi_driver::orphans::ChainDeleter for Deleted {
    async fn delete_chain(
        &self,
        chain: ate::ChainId,
        _owner: &ate::SigningKey,
    ) -> Result<(), ate::remote::RemoteError> {
        self.0.lock().unwrap().push(chain);
        Ok(())
    }
}

#[tokio::test]
async fn orphans_are_volumes_whose_pv_is_gone_and_that_are_past_the_grace_period() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let collector = csi_driver::orphans::OrphanCollector::new(
        client,
        "atefs-system",
        std::time::Duration::from_secs(600),
    );
    let (kept, orphan, young) = (volume(), volume(), volume());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
        "items": [secret_json("pvc-kept", &kept), secret_json("pvc-orphan", &orphan),
                  secret_json_at("pvc-young", &young, &now)]});
    let pv =
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-kept"}});
    let server = tokio::spawn(async move {
        let mut seen = vec![];
        seen.push(answer(&mut h, 200, list).await);
        seen.push(answer(&mut h, 200, pv).await);
        seen.push(answer(&mut h, 404, status(404, "NotFound")).await);
        seen.push(
            answer(
                &mut h,
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            )
            .await,
        );
        seen
    });
    let deleted = Deleted::default();
    let sweep = collector.sweep(&deleted).await.unwrap();
    assert_eq!(sweep.seen, 3);
    assert_eq!(sweep.collected, vec!["pvc-orphan".to_string()]);
    assert_eq!(sweep.failed, 0);
    assert_eq!(
        *deleted.0.lock().unwrap(),
        vec![orphan.keys.chain],
        "only the orphan's chain"
    );
    let seen = server.await.unwrap();
    let calls: Vec<(String, String)> = seen
        .into_iter()
        .map(|(m, u, _)| (m, u.trim_end_matches('?').to_string()))
        .collect();
    assert!(
        calls[0]
            .1
            .starts_with("/api/v1/namespaces/atefs-system/secrets?"),
        "{calls:?}"
    );
    assert!(
        calls[0]
            .1
            .contains("labelSelector=csi.atefs.io%2Fvolume-id"),
        "{calls:?}"
    );
    assert_eq!(
        calls[1],
        ("GET".into(), "/api/v1/persistentvolumes/pvc-kept".into())
    );
    assert_eq!(
        calls[2],
        ("GET".into(), "/api/v1/persistentvolumes/pvc-orphan".into())
    );
    assert_eq!(
        calls[3],
        (
            "DELETE".into(),
            "/api/v1/namespaces/atefs-system/secrets/atefs-pvc-orphan".into()
        )
    );
    // The young one was not even looked up: no fifth request.
}

/// Chain usage by chain, as the chain servers would answer.
struct Usage(std::collections::HashMap<ate::ChainId, (u64, u64)>);

#[tonic::async_trait]
impl csi_driver::status::ChainUsage for Usage {
    async fn usage(
        &self,
        chain: ate::ChainId,
    ) -> Result<Option<(u64, u64)>, ate::remote::RemoteError> {
        Ok(self.0.get(&chain).copied())
    }
}

fn pv_json(name: &str, driver: &str, chain: ate::ChainId, claim: Option<(&str, &str)>) -> Value {
    let mut spec = json!({"csi": {"driver": driver, "volumeHandle": chain.to_hex()}});
    if let Some((ns, c)) = claim {
        spec["claimRef"] = json!({"namespace": ns, "name": c, "uid": format!("uid-{c}")});
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})
}

/// The status check: a volume whose keys Secret is gone, one whose chain the servers lost and
/// one nearly full are each reported with a Warning Event on its claim; a healthy volume,
/// another driver's and an unbound one are not.
#[tokio::test]
async fn volumes_in_trouble_are_reported_on_their_claims() {
    use csi_driver::status::{Problem, StatusChecker};
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let checker = StatusChecker::new(
        kube::Client::new(svc, "default"),
        "atefs-system",
        "csi.atefs.io",
    );
    let [ok, no_keys, lost, full, other, unbound] =
        std::array::from_fn::<_, 6, _>(|_| ate::ChainId::random());
    let keyed = |c: ate::ChainId| json!({"metadata": {"labels": {VOLUME_ID_LABEL: c.to_hex()}}});
    let secrets = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
        "items": [keyed(ok), keyed(lost), keyed(full), keyed(unbound)]});
    let pvs = json!({"apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {}, "items": [
        pv_json("pv-ok", "csi.atefs.io", ok, Some(("apps", "ok"))),
        pv_json("pv-no-keys", "csi.atefs.io", no_keys, Some(("apps", "data"))),
        pv_json("pv-lost", "csi.atefs.io", lost, Some(("db", "wal"))),
        pv_json("pv-full", "csi.atefs.io", full, Some(("apps", "logs"))),
        pv_json("pv-other", "other.csi.io", other, Some(("apps", "x"))),
        pv_json("pv-unbound", "csi.atefs.io", unbound, None),
    ]});
    let usage = Usage(
        [(ok, (10, 100)), (full, (95, 100)), (unbound, (99, 100))]
            .into_iter()
            .collect(),
    );
    let server = tokio::spawn(async move {
        let mut seen = vec![
            answer(&mut h, 200, secrets).await,
            answer(&mut h, 200, pvs).await,
        ];
        for _ in 0..3 {
            seen.push(
                answer(
                    &mut h,
                    201,
                    json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e"}, "involvedObject": {}}),
                )
                .await,
            );
        }
        seen
    });
    let findings = checker.check(&usage).await.unwrap();
    let got: Vec<(&str, &Problem)> = findings
        .iter()
        .map(|f| (f.pv.as_str(), &f.problem))
        .collect();
    assert_eq!(
        got,
        vec![
            ("pv-no-keys", &Problem::KeysMissing),
            ("pv-lost", &Problem::ChainMissing),
            (
                "pv-full",
                &Problem::NearlyFull {
                    used: 95,
                    quota: 100
                }
            ),
            (
                "pv-unbound",
                &Problem::NearlyFull {
                    used: 99,
                    quota: 100
                }
            ),
        ]
    );
    assert_eq!(checker.report(&findings).await.unwrap(), 3);
    let seen = server.await.unwrap();
    assert!(
        seen[0]
            .1
            .starts_with("/api/v1/namespaces/atefs-system/secrets?"),
        "{seen:?}"
    );
    assert!(
        seen[1].1.starts_with("/api/v1/persistentvolumes"),
        "{seen:?}"
    );
    let events: Vec<(String, String, String, String)> = seen[2..]
        .iter()
        .map(|(m, uri, body)| {
            assert_eq!(m, "POST");
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["involvedObject"]["kind"], "PersistentVolumeClaim");
            (
                uri.trim_end_matches('?').to_string(),
                body["involvedObject"]["name"].as_str().unwrap().to_string(),
                body["involvedObject"]["uid"].as_str().unwrap().to_string(),
                body["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ev = |ns: &str, claim: &str, reason: &str| {
        (
            format!("/api/v1/namespaces/{ns}/events"),
            claim.to_string(),
            format!("uid-{claim}"),
            reason.to_string(),
        )
    };
    assert_eq!(
        events,
        vec![
            ev("apps", "data", "VolumeKeysMissing"),
            ev("db", "wal", "VolumeChainMissing"),
            ev("apps", "logs", "VolumeNearlyFull"),
        ]
    );
}

/// A rekey stopped after the volume's Secret was removed (Secrets are immutable: replaced by
/// delete and create) is finished from the pending Secret alone, without the chain servers:
/// the volume's Secret is made again with the pending keys, under its own name and label,
/// and only then the pending one (`atefs-rekey-NAME`, labelled apart from volumes so that
/// the orphan sweep never takes it for one) goes.
#[tokio::test]
async fn a_rekey_stopped_between_delete_and_create_makes_the_secret_again() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let volumes = SecretStore::new(client.clone(), "atefs-system");
    let pending = SecretStore::of(client, "atefs-system", Records::Rekeys);
    let name = "pvc-0d2a";
    let new = volume();
    let mut held = secret_json(name, &new);
    held["metadata"]["name"] = json!("atefs-rekey-pvc-0d2a");
    let server = tokio::spawn(async move {
        let mut seen = vec![answer(&mut h, 404, status(404, "NotFound")).await];
        seen.push(answer(&mut h, 200, held).await);
        seen.push(
            answer(
                &mut h,
                201,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}),
            )
            .await,
        );
        seen.push(answer(&mut h, 200, status(200, "Success")).await);
        seen
    });
    let outcome = csi_driver::rekey::rekey_volume(
        &volumes,
        &pending,
        ate::remote::RemoteOptions::from_flags(vec!["127.0.0.1:1".into()], None, true).unwrap(),
        std::path::Path::new("/nonexistent"),
        name,
    )
    .await
    .unwrap();
    assert_eq!(outcome, csi_driver::rekey::RekeyOutcome::Restored);
    let seen = server.await.unwrap();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, u, _)| (m.as_str(), u.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "GET",
                "/api/v1/namespaces/atefs-system/secrets/atefs-pvc-0d2a"
            ),
            (
                "GET",
                "/api/v1/namespaces/atefs-system/secrets/atefs-rekey-pvc-0d2a"
            ),
            ("POST", "/api/v1/namespaces/atefs-system/secrets?"),
            (
                "DELETE",
                "/api/v1/namespaces/atefs-system/secrets/atefs-rekey-pvc-0d2a?"
            ),
        ]
    );
    let made = &seen[2].2;
    assert_eq!(made["metadata"]["name"], "atefs-pvc-0d2a");
    assert_eq!(
        made["metadata"]["labels"][VOLUME_ID_LABEL],
        new.keys.chain.to_hex()
    );
    assert_eq!(made["immutable"], true);
    assert_eq!(
        made["stringData"][KEY_ENVELOPE],
        *csi_driver::volume_id::envelope_to_hex(&new.keys)
    );
}
