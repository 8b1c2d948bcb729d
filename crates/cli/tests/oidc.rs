//! Signing in with OIDC through the real server: an issuer on loopback serving its JWKS with a
//! key this test makes; a valid token signs its subject in with the roles its groups map to;
//! each classic JWT attack gets the same 401 with `WWW-Authenticate`, and is audited.

mod common;

use std::net::SocketAddr;

use axum::Json;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Server, can_run_sandboxes};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const AUDIENCE: &str = "airlock";

struct Issuer {
    url: String,
    key: EncodingKey,
    public: [u8; 32],
}

/// Serves `/jwks` on 127.0.0.1 with one Ed25519 key made now.
async fn issuer() -> Issuer {
    let seed: [u8; 32] = rand::random();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    let der = signing.to_pkcs8_der().unwrap();
    let jwks = json!({ "keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(public),
    }]});
    let app = axum::Router::new().route("/jwks", get(move || async move { Json(jwks) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer {
        url: format!("http://{address}"),
        key: EncodingKey::from_ed_der(der.as_bytes()),
        public,
    }
}

impl Issuer {
    fn claims(&self, subject: &str, groups: &[&str]) -> Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({
            "iss": self.url, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300,
            "preferred_username": format!("{subject}@example.com"), "groups": groups,
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn base64url(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_tokens_sign_in_and_every_forgery_gets_the_same_401() {
    if !can_run_sandboxes("oidc_tokens_sign_in_and_every_forgery_gets_the_same_401") {
        return;
    }
    let issuer = issuer().await;
    let jwks_url = format!("{}/jwks", issuer.url);
    let server = Server::start_with(&[
        "--oidc-issuer",
        &issuer.url,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-jwks-url",
        &jwks_url,
        "--oidc-role-map",
        "eng=developer,oncall=approver",
    ]);
    let valid = issuer.sign(&issuer.claims("ada", &["eng", "unrelated"]));

    // A valid token: the user is made at first sign-in, with the roles its groups map to.
    let ada = server.client(&valid);
    let (status, me) = ada.get("/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["roles"], json!(["developer"]));
    assert_eq!(me["user"]["external"], true);
    assert_eq!(me["credential"], "oidc:ada");
    let id = me["user"]["id"].as_str().unwrap().to_owned();
    let environment = ada.create(json!({ "resources": { "disk_mib": 64 } })).await;
    // The same subject again is the same user; its groups decide its roles each time.
    let oncall = server.client(&issuer.sign(&issuer.claims("ada", &["oncall"])));
    let (_, me) = oncall.get("/v1/whoami").await;
    assert_eq!(me["user"]["id"], id.as_str());
    assert_eq!(me["user"]["roles"], json!(["approver"]));
    // An approver is not a developer: no environments of its own to create.
    let (status, _) = oncall.post("/v1/environments", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = ada.delete(&format!("/v1/environments/{environment}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The attacks, each answered exactly alike.
    let claims = issuer.claims("mallory", &["eng"]);
    let payload = base64url(&claims.to_string());
    let mut forgeries: Vec<(&str, String)> = Vec::new();
    forgeries.push((
        "alg none",
        format!("{}.{payload}.", base64url(r#"{"alg":"none","typ":"JWT"}"#)),
    ));
    let hs_header = base64url(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let hs_message = format!("{hs_header}.{payload}");
    let hs_signature = jsonwebtoken::crypto::sign(
        hs_message.as_bytes(),
        &EncodingKey::from_secret(&issuer.public),
        Algorithm::HS256,
    )
    .unwrap();
    forgeries.push((
        "HS256 keyed with the public key",
        format!("{hs_message}.{hs_signature}"),
    ));
    let (header, _, signature) = {
        let mut parts = valid.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    forgeries.push((
        "tampered payload",
        format!("{header}.{payload}.{signature}"),
    ));
    let mut flipped = valid.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    forgeries.push(("tampered signature", String::from_utf8(flipped).unwrap()));
    let mut expired = issuer.claims("ada", &["eng"]);
    expired["exp"] = json!(jsonwebtoken::get_current_timestamp() as i64 - 3600);
    forgeries.push(("expired", issuer.sign(&expired)));
    let mut early = issuer.claims("ada", &["eng"]);
    early["nbf"] = json!(jsonwebtoken::get_current_timestamp() as i64 + 3600);
    forgeries.push(("not yet valid", issuer.sign(&early)));
    let mut other_audience = issuer.claims("ada", &["eng"]);
    other_audience["aud"] = json!("someone-else");
    forgeries.push(("wrong audience", issuer.sign(&other_audience)));
    let mut other_issuer = issuer.claims("ada", &["eng"]);
    other_issuer["iss"] = json!("https://evil.example");
    forgeries.push(("wrong issuer", issuer.sign(&other_issuer)));
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let stranger_key = EncodingKey::from_ed_der(stranger.to_pkcs8_der().unwrap().as_bytes());
    let mut stranger_header = Header::new(Algorithm::EdDSA);
    stranger_header.kid = Some("k1".into());
    forgeries.push((
        "signed by another key",
        jsonwebtoken::encode(&stranger_header, &claims, &stranger_key).unwrap(),
    ));

    let mut bodies = Vec::new();
    for (attack, token) in &forgeries {
        let answer = server
            .client(token)
            .call(Method::GET, "/v1/whoami", None, &[])
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{attack}: {}",
            answer.body
        );
        assert!(
            answer.headers.contains_key("www-authenticate"),
            "{attack}: no WWW-Authenticate"
        );
        bodies.push(answer.body["detail"].clone());
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "{bodies:?}"
    );

    // A token in the query string is never read.
    let answer = server
        .anonymous()
        .call(
            Method::GET,
            &format!("/v1/whoami?access_token={valid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // Every refusal is in the audit trail, as an anonymous 401.
    let db = server.data_dir.join("airlock.db");
    let store = airlock_store::SqliteStore::open(&db).await.unwrap();
    use airlock_core::ports::Store;
    let refusals = store
        .list_audit(500)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.outcome == "unauthenticated")
        .count();
    assert!(refusals > forgeries.len(), "{refusals} refusals audited");
}
