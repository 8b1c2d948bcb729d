//! Users, teams and API tokens.

use super::Engine;
use crate::action::{NewToken, NewUser, Reply};
use crate::error::{Error, Invalid};
use crate::ids::{TokenId, UserId};
use crate::model::{Principal, Role, Scope, TokenRecord, User};
use crate::ports::StoreError;
use crate::secret::Secret;

impl Engine {
    pub(super) async fn create_user(&self, new_user: NewUser) -> Result<Reply, Error> {
        let mut roles = new_user.roles;
        if roles.is_empty() {
            roles.push(Role::Developer);
        }
        roles.sort();
        roles.dedup();
        let user = User {
            id: UserId::generate(),
            name: new_user.name,
            roles,
            created_at: self.clock.now(),
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

    pub(super) async fn create_token(
        &self,
        principal: &Principal,
        new_token: NewToken,
    ) -> Result<Reply, Error> {
        let owner = match &new_token.user {
            Some(user_id) if *user_id != principal.user.id => {
                if !principal.acts_as_admin() {
                    return Err(Error::Forbidden(
                        "only an admin may create tokens for other users".into(),
                    ));
                }
                self.store
                    .get_user(user_id)
                    .await?
                    .ok_or(Error::not_found("user"))?
            }
            _ => principal.user.clone(),
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
        if scopes.contains(&Scope::Admin) && !owner.is_admin() {
            return Err(Invalid::new("scopes", "`admin` needs a user with the admin role").into());
        }
        let now = self.clock.now();
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
        };
        self.store.insert_token(&record).await?;
        Ok(Reply::Token { record, secret })
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
        if token.user_id != principal.user.id && !principal.acts_as_admin() {
            return Err(Error::not_found("token"));
        }
        if !self.store.revoke_token(id, self.clock.now()).await? {
            return Err(Error::not_found("token"));
        }
        Ok(Reply::Done)
    }
}
