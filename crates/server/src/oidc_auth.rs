//! Signing in with an OIDC bearer JWT: the token verified against the issuer's keys (see
//! `oidc`), its groups mapped to roles and teams, and the user it names found or made.

use std::time::Duration;

use airlock_core::model::{Principal, Role, Scope};
use airlock_core::{Engine, Error, ExternalIdentity};

use crate::oidc::{OidcConfig, OidcError, Verifier};

/// What the operator configures for OIDC.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    /// Where the issuer's keys are; discovered from the issuer when absent.
    pub jwks_url: Option<String>,
    /// The claim that lists the user's groups.
    pub groups_claim: String,
    /// Which group gives which role. When empty, a group named like a role gives that role.
    pub role_map: Vec<(String, Role)>,
    pub leeway: Duration,
}

pub struct OidcAuthenticator {
    verifier: Verifier,
    role_map: Vec<(String, Role)>,
}

impl OidcAuthenticator {
    pub fn new(settings: OidcSettings) -> Result<Self, OidcError> {
        let verifier = Verifier::new(OidcConfig {
            issuer: settings.issuer,
            audience: settings.audience,
            jwks_url: settings.jwks_url,
            groups_claim: settings.groups_claim,
            leeway: settings.leeway,
        })?;
        Ok(Self {
            verifier,
            role_map: settings.role_map,
        })
    }

    /// Whether a presented bearer value is a JWT (rather than an `alk_` token).
    pub fn accepts(token: &str) -> bool {
        Verifier::looks_like_jwt(token)
    }

    /// Verifies the token and signs its subject in. Every failure is `Unauthenticated`; the
    /// reason is logged, never told to the caller.
    pub async fn authenticate(&self, engine: &Engine, token: &str) -> Result<Principal, Error> {
        let identity = match self.verifier.verify(token).await {
            Ok(identity) => identity,
            Err(error) => {
                tracing::info!(%error, "an OIDC token was refused");
                return Err(Error::Unauthenticated);
            }
        };
        let roles = self.roles(&identity.groups);
        let scopes = identity.scopes.as_ref().map(|words| {
            words
                .iter()
                .filter_map(|word| Scope::parse(word).ok())
                .collect()
        });
        engine
            .authenticate_external(ExternalIdentity {
                issuer: identity.issuer,
                subject: identity.subject,
                name: identity.name,
                roles,
                groups: identity.groups,
                scopes,
            })
            .await
    }

    fn roles(&self, groups: &[String]) -> Vec<Role> {
        let mut roles: Vec<Role> = if self.role_map.is_empty() {
            groups
                .iter()
                .filter_map(|group| Role::parse(group).ok())
                .collect()
        } else {
            self.role_map
                .iter()
                .filter(|(group, _)| groups.contains(group))
                .map(|(_, role)| *role)
                .collect()
        };
        roles.sort();
        roles.dedup();
        roles
    }
}
