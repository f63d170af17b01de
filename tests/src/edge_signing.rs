//! Signing requests as an edge does (`domain::edge_auth`), for tests that call an origin
//! which only lets edges in: the edge suite's setup steps that go to the origin directly,
//! the regions suite's direct reads, and the front-door tests that forge, tamper with and
//! replay signatures.

use chrono::Utc;
use domain::edge_auth::{self, EdgeSigner, RequestParts};

use crate::TestResult;

/// The key id and secret the edge suites' edges sign with and their origins accept.
pub const EDGE_KID: &str = "e1";
pub const EDGE_KEY: &str = "test-edge-signing-key-test-edge-signing-key";

/// An edge's signer, for a test.
#[derive(Debug, Clone)]
pub struct TestSigner {
    signer: EdgeSigner,
    region: String,
}

impl TestSigner {
    /// A signer for key `kid` with `secret`, signing as an edge of `region`.
    pub fn new(kid: &str, secret: &str, region: &str) -> TestResult<Self> {
        Ok(TestSigner {
            signer: EdgeSigner::new(kid, secret.as_bytes())?,
            region: region.to_owned(),
        })
    }

    /// The edge suites' signer ([`EDGE_KID`], [`EDGE_KEY`], EUW).
    pub fn suite() -> TestResult<Self> {
        Self::new(EDGE_KID, EDGE_KEY, "EUW")
    }

    /// Signs `req` now with a fresh nonce (adding an `X-Request-Id` when it has none).
    pub fn sign(&self, req: &mut reqwest::Request) -> TestResult {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.sign_at(req, Utc::now().timestamp(), &nonce)
    }

    /// Signs `req` as if at `timestamp` with `nonce` (a test's own clock and nonce).
    pub fn sign_at(&self, req: &mut reqwest::Request, timestamp: i64, nonce: &str) -> TestResult {
        if !req.headers().contains_key("x-request-id") {
            let id = uuid::Uuid::new_v4().simple().to_string();
            req.headers_mut().insert("x-request-id", id.parse()?);
        }
        let body: &[u8] = req.body().and_then(reqwest::Body::as_bytes).unwrap_or(&[]);
        let hash = edge_auth::body_sha256(body);
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let parts = RequestParts {
            method: req.method().as_str(),
            path: req.url().path(),
            query: req.url().query().unwrap_or(""),
            body_sha256: &hash,
            request_id: &request_id,
            region: &self.region,
        };
        let signature = self.signer.sign(&parts, timestamp, nonce);
        let headers = req.headers_mut();
        headers.insert(edge_auth::SIGNATURE_HEADER, signature.parse()?);
        headers.insert(edge_auth::REGION_HEADER, self.region.parse()?);
        Ok(())
    }
}
