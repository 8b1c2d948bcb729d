//! Users (local, or made from OIDC sign-ins), teams with their quotas, and API tokens.

use sha2::{Digest, Sha256};

use super::{Engine, Origin};
use crate::action::{NewToken, NewUser, Reply};
use crate::authz::Resource;
use crate::error::{Error, Invalid};
use crate::ids::{Name, TokenId, UserId};
use crate::model::{Credential, Principal, Quota, Role, Scope, Team, TokenRecord, User};
use crate::ports::StoreError;
use crate::secret::Secret;

/// Who a verified OIDC token names, and how its groups map into airlock.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalIdentity {
    pub issuer: String,
    pub subject: String,
    /// A readable name (`preferred_username` or `email`), if the token has one.
    pub name: Option<String>,
    pub roles: Vec<Role>,
    /// Groups that may name teams; those that do not are ignored.
    pub groups: Vec<String>,
    /// The token's `scope` claim, when it has one; otherwise every scope (roles still limit).
    pub scopes: Option<Vec<Scope>>,
}

impl Engine {
    /// Turns a verified OIDC identity into a principal: the user of that issuer and subject,
    /// made at first sign-in, whose roles and teams follow the token's groups each time.
    pub async fn authenticate_external(
        &self,
        identity: ExternalIdentity,
    ) -> Result<Principal, Error> {
        let external_id = format!("{} {}", identity.issuer, identity.subject);
        let known_teams: Vec<Name> = self
            .store
            .list_teams()
            .await?
            .into_iter()
            .map(|team| team.name)
            .collect();
        let mut teams: Vec<Name> = known_teams
            .into_iter()
            .filter(|team| identity.groups.iter().any(|group| group == team.as_str()))
            .collect();
        teams.sort();
        let mut roles = identity.roles.clone();
        roles.sort();
        roles.dedup();
        let user = match self.store.find_external_user(&external_id).await? {
            Some(mut user) => {
                if user.roles != roles || user.teams != teams {
                    // A change of roles is on record before it takes effect.
                    self.try_audit(
                        &Origin::default(),
                        "system",
                        "user.sync",
                        Some(user.id.to_string()),
                        "ok",
                        Some(format!(
                            "roles [{}] and teams [{}] from OIDC groups",
                            roles
                                .iter()
                                .map(|role| role.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                            teams.iter().map(Name::as_str).collect::<Vec<_>>().join(",")
                        )),
                    )
                    .await?;
                    user.roles = roles;
                    user.teams = teams;
                    self.store.update_user(&user).await?;
                }
                user
            }
            None => {
                let user = User {
                    id: UserId::generate(),
                    name: external_name(&identity),
                    roles,
                    teams,
                    external_id: Some(external_id.clone()),
                    created_at: self.now(),
                };
                self.try_audit(
                    &Origin::default(),
                    "system",
                    "user.sign_up",
                    Some(user.id.to_string()),
                    "ok",
                    Some(format!("first sign-in of {} by OIDC", user.name)),
                )
                .await?;
                match self.store.insert_user(&user).await {
                    Ok(()) => user,
                    Err(StoreError::Duplicate(_)) => {
                        // Two first requests at once: the other one made the user. (Or the
                        // name is a local user's: then there is no such user, and no way in.)
                        let Some(made) = self.store.find_external_user(&external_id).await? else {
                            tracing::warn!(name = %user.name, "an OIDC user's name is taken");
                            return Err(Error::Unauthenticated);
                        };
                        made
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        Ok(Principal {
            user,
            credential: Credential::Oidc {
                subject: identity.subject,
            },
            scopes: identity.scopes.unwrap_or(Scope::ALL.to_vec()),
            rate_limit: None,
        })
    }

    pub(super) async fn create_user(
        &self,
        principal: &Principal,
        new_user: NewUser,
    ) -> Result<Reply, Error> {
        self.require(principal, "user.create", &Resource::Server)?;
        let mut roles = new_user.roles;
        if roles.is_empty() {
            roles.push(Role::Developer);
        }
        roles.sort();
        roles.dedup();
        let teams = self.existing_teams(new_user.teams).await?;
        let user = User {
            id: UserId::generate(),
            name: new_user.name,
            roles,
            teams,
            external_id: None,
            created_at: self.now(),
        };
        match self.store.insert_user(&user).await {
            Ok(()) => Ok(Reply::User(user)),
            Err(StoreError::Duplicate(_)) => Err(Error::Conflict(format!(
                "a user named {:?} already exists",
                user.name.as_str()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    pub(super) async fn list_users(&self, principal: &Principal) -> Result<Reply, Error> {
        self.require(principal, "user.list", &Resource::Server)?;
        let mut users = Vec::new();
        let mut after: Option<UserId> = None;
        loop {
            let page = self.store.list_users(after.as_ref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            users.extend(page);
        }
        Ok(Reply::Users(users))
    }

    pub(super) async fn update_user(
        &self,
        principal: &Principal,
        id: &UserId,
        roles: Option<Vec<Role>>,
        teams: Option<Vec<Name>>,
    ) -> Result<Reply, Error> {
        self.require(
            principal,
            "user.update",
            &Resource::User { id: id.as_str() },
        )?;
        let mut user = self
            .store
            .get_user(id)
            .await?
            .ok_or(Error::not_found("user"))?;
        if user.external_id.is_some() {
            return Err(Error::Conflict(
                "this user's roles and teams come from its OIDC groups".into(),
            ));
        }
        if let Some(mut roles) = roles {
            roles.sort();
            roles.dedup();
            if user.id == principal.user.id && !roles.contains(&Role::Admin) {
                return Err(Error::Conflict(
                    "an admin cannot take the admin role from themselves".into(),
                ));
            }
            user.roles = roles;
        }
        if let Some(teams) = teams {
            user.teams = self.existing_teams(teams).await?;
        }
        if !self.store.update_user(&user).await? {
            return Err(Error::not_found("user"));
        }
        Ok(Reply::User(user))
    }

    /// Sorted, deduplicated, and each an existing team.
    async fn existing_teams(&self, mut teams: Vec<Name>) -> Result<Vec<Name>, Error> {
        teams.sort();
        teams.dedup();
        for team in &teams {
            if self.store.get_team(team).await?.is_none() {
                return Err(
                    Invalid::new("teams", format!("{:?} is not a team", team.as_str())).into(),
                );
            }
        }
        Ok(teams)
    }

    pub(super) async fn create_team(
        &self,
        principal: &Principal,
        name: Name,
        quota: Quota,
    ) -> Result<Reply, Error> {
        self.require(principal, "team.create", &Resource::Server)?;
        let team = Team {
            name,
            quota,
            created_at: self.now(),
        };
        match self.store.insert_team(&team).await {
            Ok(()) => Ok(Reply::Team(team)),
            Err(StoreError::Duplicate(_)) => Err(Error::Conflict(format!(
                "a team named {:?} already exists",
                team.name.as_str()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    pub(super) async fn list_teams(&self, principal: &Principal) -> Result<Reply, Error> {
        self.require(principal, "team.list", &Resource::Server)?;
        Ok(Reply::Teams(self.store.list_teams().await?))
    }

    pub(super) async fn set_quota(
        &self,
        principal: &Principal,
        name: &Name,
        quota: Quota,
    ) -> Result<Reply, Error> {
        self.require(
            principal,
            "team.update",
            &Resource::Team {
                name: name.as_str(),
            },
        )?;
        if !self.store.set_quota(name, &quota).await? {
            return Err(Error::not_found("team"));
        }
        let team = self
            .store
            .get_team(name)
            .await?
            .ok_or(Error::not_found("team"))?;
        Ok(Reply::Team(team))
    }

    pub(super) async fn create_token(
        &self,
        principal: &Principal,
        new_token: NewToken,
    ) -> Result<Reply, Error> {
        let owner_id = new_token.user.as_ref().unwrap_or(&principal.user.id);
        self.require_visible(
            principal,
            "token.create",
            "user.get",
            "user",
            &Resource::User {
                id: owner_id.as_str(),
            },
        )?;
        let owner = if *owner_id == principal.user.id {
            principal.user.clone()
        } else {
            self.store
                .get_user(owner_id)
                .await?
                .ok_or(Error::not_found("user"))?
        };
        let mut scopes = new_token
            .scopes
            .unwrap_or_else(|| vec![Scope::Read, Scope::Write]);
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(Invalid::new("scopes", "must name at least one scope").into());
        }
        if let Some(scope) = scopes.iter().find(|scope| !principal.has_scope(**scope)) {
            return Err(Error::Forbidden(format!(
                "a token cannot grant the `{}` scope its creator lacks",
                scope.as_str()
            )));
        }
        if scopes.contains(&Scope::Admin) && !owner.has_role(Role::Admin) {
            return Err(Invalid::new("scopes", "`admin` needs a user with the admin role").into());
        }
        let now = self.now();
        let expires_at = match new_token.expires_in_seconds {
            None => None,
            Some(seconds) if seconds == 0 || seconds > self.limits.max_token_lifetime.as_secs() => {
                return Err(Invalid::new(
                    "expires_in_seconds",
                    format!(
                        "must be between 1 and {}",
                        self.limits.max_token_lifetime.as_secs()
                    ),
                )
                .into());
            }
            Some(seconds) => Some(now + chrono::Duration::seconds(seconds as i64)),
        };
        if let Some(description) = &new_token.description
            && (description.len() > 200 || description.chars().any(char::is_control))
        {
            return Err(
                Invalid::new("description", "must be at most 200 printable characters").into(),
            );
        }
        let secret = Secret::generate();
        let record = TokenRecord {
            id: TokenId::generate(),
            user_id: owner.id,
            secret_hash: secret.hash(),
            scopes,
            description: new_token.description,
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            rate_limit: new_token.rate_limit,
        };
        self.store.insert_token(&record).await?;
        Ok(Reply::Token { record, secret })
    }

    pub(super) async fn list_tokens(
        &self,
        principal: &Principal,
        user: Option<UserId>,
    ) -> Result<Reply, Error> {
        let user = user.unwrap_or_else(|| principal.user.id.clone());
        self.require_visible(
            principal,
            "token.list",
            "user.get",
            "user",
            &Resource::User { id: user.as_str() },
        )?;
        Ok(Reply::Tokens(self.store.list_tokens(&user).await?))
    }

    pub(super) async fn revoke_token(
        &self,
        principal: &Principal,
        id: &TokenId,
    ) -> Result<Reply, Error> {
        let token = self
            .store
            .get_token(id)
            .await?
            .ok_or(Error::not_found("token"))?;
        // Nobody may learn that another user's token exists: refusals are 404.
        let resource = Resource::Token {
            id: token.id.as_str(),
            owner: token.user_id.as_str(),
        };
        if !self.allows(principal, "token.revoke", &resource) {
            return Err(Error::not_found("token"));
        }
        if !self.store.revoke_token(id, self.now()).await? {
            return Err(Error::not_found("token"));
        }
        Ok(Reply::Done)
    }
}

/// A user name for an OIDC user: its readable name made into a [`Name`], else one derived
/// from the subject. A short hash of issuer and subject keeps it unique.
fn external_name(identity: &ExternalIdentity) -> Name {
    let digest = Sha256::digest(format!("{} {}", identity.issuer, identity.subject));
    let tag: String = digest[..3]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let base: String = identity
        .name
        .as_deref()
        .unwrap_or("oidc")
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "oidc" } else { base };
    Name::parse("name", &format!("{base}-{tag}"))
        .unwrap_or_else(|_| Name::parse("name", &format!("oidc-{tag}")).expect("valid name"))
}
