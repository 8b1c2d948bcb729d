//! Authorization: the one policy decision point, where Cedar policies decide every action.
//!
//! Every request is authorized here and nowhere else. The model, in Cedar's namespace `Airlock`
//! (the full text is [`Authorizer::SCHEMA`]):
//!
//! - the principal is always a `User` (a person or a service account), a member of one `Role`
//!   entity per role it holds and one `Team` entity per team;
//! - the action is `Airlock::Action::"<name>"`, one of [`Authorizer::ACTIONS`];
//! - the resource is the thing acted on ([`Resource`]): `Server` for collections (list, create,
//!   read the audit log), or an `Environment`, `User`, `Token`, `Team`, `AccessProfile` or
//!   `AccessRequest` with the attributes a policy needs (owner, requester, the profile's
//!   requesters and approvers).
//!
//! Policies are validated against the schema in strict mode when the [`Authorizer`] is built, so
//! a policy that names an unknown attribute, type or action is refused at start rather than
//! failing silently on some later request. Decisions are default deny: an unknown action, a
//! resource of the wrong kind for the action, or any evaluation error denies.
//!
//! The entities of one decision are built from the [`Subject`] and [`Resource`] alone: the
//! caller has already loaded the environment, token or request, and this module does no I/O.
//! Consequently a policy sees the principal's roles and teams, but not those of other users
//! (`resource.owner in Airlock::Team::"x"` is always false).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use miette::Diagnostic;

use crate::ids::Name;
use crate::model::{Party, Role};

/// Who is asking: the authenticated principal with its roles and teams.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user id, e.g. `usr_01h...`.
    pub user: &'a str,
    pub roles: &'a [Role],
    pub teams: &'a [Name],
}

/// An access profile as far as policies care: its name and who may request and approve it.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRef<'a> {
    pub name: &'a str,
    pub requesters: &'a [Party],
    pub approvers: &'a [Party],
}

/// What an action is done to. Each action takes one kind, listed in [`Authorizer::SCHEMA`];
/// a resource of another kind is denied.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// The server itself, for actions on collections: list, create, read the audit log.
    Server,
    Environment {
        id: &'a str,
        /// The owner's user id.
        owner: &'a str,
        team: Option<&'a str>,
    },
    /// A user; also the resource of `token.create` and `token.list` (whose tokens).
    User {
        id: &'a str,
    },
    Token {
        id: &'a str,
        /// The owner's user id.
        owner: &'a str,
    },
    Team {
        name: &'a str,
    },
    AccessProfile(ProfileRef<'a>),
    AccessRequest {
        id: &'a str,
        /// The requester's user id.
        requester: &'a str,
        profile: ProfileRef<'a>,
    },
}

/// The kinds of [`Resource`], one per Cedar entity type an action applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server,
    Environment,
    User,
    Token,
    Team,
    AccessProfile,
    AccessRequest,
}

impl Resource<'_> {
    fn kind(&self) -> Kind {
        match self {
            Resource::Server => Kind::Server,
            Resource::Environment { .. } => Kind::Environment,
            Resource::User { .. } => Kind::User,
            Resource::Token { .. } => Kind::Token,
            Resource::Team { .. } => Kind::Team,
            Resource::AccessProfile(_) => Kind::AccessProfile,
            Resource::AccessRequest { .. } => Kind::AccessRequest,
        }
    }
}

/// Every action with the kind of resource it applies to; [`Authorizer::SCHEMA`] says the same
/// (a test keeps the two in step).
const ACTION_TABLE: [(&str, Kind); 33] = [
    ("environment.create", Kind::Server),
    ("environment.list", Kind::Server),
    ("environment.list_all", Kind::Server),
    ("environment.get", Kind::Environment),
    ("environment.stop", Kind::Environment),
    ("environment.start", Kind::Environment),
    ("environment.delete", Kind::Environment),
    ("environment.exec", Kind::Environment),
    ("environment.extend", Kind::Environment),
    ("environment.lease", Kind::Environment),
    ("user.create", Kind::Server),
    ("user.list", Kind::Server),
    ("user.get", Kind::User),
    ("user.update", Kind::User),
    ("team.create", Kind::Server),
    ("team.list", Kind::Server),
    ("team.update", Kind::Team),
    ("token.create", Kind::User),
    ("token.list", Kind::User),
    ("token.revoke", Kind::Token),
    ("profile.create", Kind::Server),
    ("profile.list", Kind::Server),
    ("profile.get", Kind::AccessProfile),
    ("access.request", Kind::AccessProfile),
    ("access.list", Kind::Server),
    ("access.list_all", Kind::Server),
    ("access.get", Kind::AccessRequest),
    ("access.approve", Kind::AccessRequest),
    ("access.deny", Kind::AccessRequest),
    ("access.revoke", Kind::AccessRequest),
    ("audit.read", Kind::Server),
    ("metrics.read", Kind::Server),
    ("whoami", Kind::Server),
];

const fn action_names<const N: usize>(table: &[(&'static str, Kind); N]) -> [&'static str; N] {
    let mut names = [""; N];
    let mut index = 0;
    while index < N {
        names[index] = table[index].0;
        index += 1;
    }
    names
}

/// Where a policy came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOrigin {
    BuiltIn,
    Operator,
}

impl fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyOrigin::BuiltIn => "the built-in policies",
            PolicyOrigin::Operator => "the operator's policies",
        })
    }
}

/// One thing wrong with a policy text, located in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line and column in the policy text, when Cedar points at a place.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The policy's `@id`, or Cedar's `policyN` (the N-th policy of the text, from 0).
    pub policy: Option<String>,
    /// Cedar's message.
    pub message: String,
    /// Cedar's suggestion, if it has one.
    pub help: Option<String>,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line}, column {column}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// A list of problems, one per line.
struct Problems<'a>(&'a [PolicyProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// Why a set of policies was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not Cedar.
    #[error("{origin} are not valid Cedar:{}", Problems(problems))]
    Syntax {
        origin: PolicyOrigin,
        problems: Vec<PolicyProblem>,
    },
    /// The text is Cedar, but does not fit airlock's schema (an unknown attribute, entity type
    /// or action, a type error), checked in strict mode.
    #[error("{origin} do not fit airlock's schema:{}", Problems(problems))]
    Schema {
        origin: PolicyOrigin,
        problems: Vec<PolicyProblem>,
    },
    /// A template (with `?principal` or `?resource`): airlock links none, so it would never apply.
    #[error(
        "{origin}: policy `{policy}` is a template (`?principal`/`?resource`); airlock does not link templates, write a policy with the entities named"
    )]
    Template {
        origin: PolicyOrigin,
        policy: String,
    },
    /// Two policies share an id (their `@id` annotation): two in one text, or one of the
    /// operator's and a built-in one.
    #[error(
        "{origin}: two policies have the id `{policy}`{}; give each policy its own @id",
        if *taken_by_built_in { ", one of them built-in" } else { "" }
    )]
    DuplicateId {
        origin: PolicyOrigin,
        policy: String,
        taken_by_built_in: bool,
    },
    /// `replace_defaults` with no `permit` left: every request, the admin's included, would be
    /// denied.
    #[error(
        "the built-in policies are replaced, and the operator's policies permit nothing: every request would be denied"
    )]
    NothingPermitted,
}

/// Entity type names and fixed entity ids, parsed once.
struct Names {
    user: EntityTypeName,
    role: EntityTypeName,
    team: EntityTypeName,
    environment: EntityTypeName,
    token: EntityTypeName,
    access_profile: EntityTypeName,
    access_request: EntityTypeName,
    server: EntityUid,
}

impl Names {
    fn new() -> Self {
        let type_name = |name: &str| {
            EntityTypeName::from_str(&format!("Airlock::{name}"))
                .expect("entity type names are valid Cedar names")
        };
        Names {
            user: type_name("User"),
            role: type_name("Role"),
            team: type_name("Team"),
            environment: type_name("Environment"),
            token: type_name("Token"),
            access_profile: type_name("AccessProfile"),
            access_request: type_name("AccessRequest"),
            server: EntityUid::from_type_name_and_id(type_name("Server"), EntityId::new("airlock")),
        }
    }

    fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
    }

    fn user(&self, id: &str) -> EntityUid {
        Self::uid(&self.user, id)
    }

    fn role(&self, role: Role) -> EntityUid {
        Self::uid(&self.role, role.as_str())
    }

    fn team(&self, name: &str) -> EntityUid {
        Self::uid(&self.team, name)
    }

    fn party(&self, party: &Party) -> EntityUid {
        match party {
            Party::Role(role) => self.role(*role),
            Party::Team(name) => self.team(name.as_str()),
            Party::User(id) => self.user(id.as_str()),
        }
    }
}

/// Decides whether a subject may do an action to a resource. Built once at start from the
/// built-in and the operator's policies, then shared (it is `Send + Sync`).
pub struct Authorizer {
    cedar: cedar_policy::Authorizer,
    /// By action name: what Cedar needs to decide that action.
    actions: HashMap<&'static str, ActionPolicies>,
    names: Names,
    /// Every policy, built-in and the operator's, by id.
    all_policies: PolicySet,
}

/// One action's entity, the kind of resource it takes, and the policies that can apply to it.
struct ActionPolicies {
    uid: EntityUid,
    kind: Kind,
    /// The policies whose action scope is open or names this action. Cedar evaluates every
    /// policy of a set, and a policy whose scope names other actions is false before its
    /// conditions are looked at, so leaving it out changes no decision and saves most of the
    /// work. (This holds because the schema has no action groups: `action in [A]` is
    /// `action == A`.)
    policies: PolicySet,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("n_policies", &self.all_policies.num_of_policies())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Every action name, grouped by what it acts on.
    pub const ACTIONS: &'static [&'static str] = &action_names(&ACTION_TABLE);

    /// The Cedar schema the policies are validated against (Cedar's schema syntax). Operators
    /// write their policies against it.
    pub const SCHEMA: &'static str = r#"// airlock's authorization model. Every request is (principal, action, resource);
// the principal is always a User.
namespace Airlock {
    // A role a user holds, by name: "admin", "approver", "developer", "auditor", "viewer", "ci".
    entity Role;
    // A team, by name.
    entity Team;
    // A person or a service account, by user id; a member of its roles and teams.
    entity User in [Role, Team];
    // The server itself: the resource of actions on collections. Its id is "airlock".
    entity Server;
    entity Environment {
        owner: User,
        team?: Team,
    };
    // An API token, by token id.
    entity Token {
        owner: User,
    };
    // A production access profile, by name, with who may request and approve it.
    entity AccessProfile {
        requester_roles: Set<Role>,
        requester_teams: Set<Team>,
        requester_users: Set<User>,
        approver_roles: Set<Role>,
        approver_teams: Set<Team>,
        approver_users: Set<User>,
    };
    // A request for production access, by request id.
    entity AccessRequest {
        requester: User,
        profile: AccessProfile,
    };

    // environment.list and access.list: the principal's own; the *.list_all: everyone's.
    action "environment.create", "environment.list", "environment.list_all",
        "user.create", "user.list", "team.create", "team.list",
        "profile.create", "profile.list", "access.list", "access.list_all", "audit.read",
        "metrics.read", "whoami"
        appliesTo { principal: User, resource: Server };
    action "environment.get", "environment.stop", "environment.start", "environment.delete",
        "environment.exec", "environment.extend", "environment.lease"
        appliesTo { principal: User, resource: Environment };
    // token.create and token.list: the resource is the user whose tokens they are.
    action "user.get", "user.update", "token.create", "token.list"
        appliesTo { principal: User, resource: User };
    action "token.revoke" appliesTo { principal: User, resource: Token };
    action "team.update" appliesTo { principal: User, resource: Team };
    action "profile.get", "access.request" appliesTo { principal: User, resource: AccessProfile };
    action "access.get", "access.approve", "access.deny", "access.revoke"
        appliesTo { principal: User, resource: AccessRequest };
}
"#;

    /// The built-in policies: one commented block per role. An operator's policies are added to
    /// them; a `forbid` there overrides any `permit` here.
    pub const DEFAULT_POLICIES: &'static str = r#"// airlock's built-in policies. Default deny: what no policy permits is refused, and a forbid
// overrides every permit.

// Everyone signed in may ask who they are.
@id("everyone.whoami")
permit (principal, action == Airlock::Action::"whoami", resource);

// admin: everything but deciding access requests. Separation of duties: a request is approved
// or denied by the approvers its profile names (which may include the admin role).
@id("admin.all_but_decisions")
permit (principal in Airlock::Role::"admin", action, resource)
unless { action in [Airlock::Action::"access.approve", Airlock::Action::"access.deny"] };

// developer: their own environments and tokens, the profiles, and production access where a
// profile lets them request it.
@id("developer.environments")
permit (
    principal in Airlock::Role::"developer",
    action in [Airlock::Action::"environment.create", Airlock::Action::"environment.list"],
    resource
);
@id("developer.own_environments")
permit (
    principal in Airlock::Role::"developer",
    action in [
        Airlock::Action::"environment.get",
        Airlock::Action::"environment.stop",
        Airlock::Action::"environment.start",
        Airlock::Action::"environment.delete",
        Airlock::Action::"environment.exec",
        Airlock::Action::"environment.extend",
        Airlock::Action::"environment.lease"
    ],
    resource
)
when { resource.owner == principal };
@id("developer.own_tokens")
permit (
    principal in Airlock::Role::"developer",
    action in [Airlock::Action::"token.create", Airlock::Action::"token.list"],
    resource
)
when { resource == principal };
@id("developer.revoke_own_tokens")
permit (principal in Airlock::Role::"developer", action == Airlock::Action::"token.revoke", resource)
when { resource.owner == principal };
@id("developer.profiles")
permit (
    principal in Airlock::Role::"developer",
    action in [Airlock::Action::"profile.list", Airlock::Action::"profile.get"],
    resource
);
@id("developer.request_access")
permit (principal in Airlock::Role::"developer", action == Airlock::Action::"access.request", resource)
when {
    principal in resource.requester_roles ||
    principal in resource.requester_teams ||
    principal in resource.requester_users
};
@id("developer.list_own_requests")
permit (principal in Airlock::Role::"developer", action == Airlock::Action::"access.list", resource);
@id("developer.own_requests")
permit (
    principal in Airlock::Role::"developer",
    action in [Airlock::Action::"access.get", Airlock::Action::"access.revoke"],
    resource
)
when { resource.requester == principal };

// ci: service accounts of CI jobs and agents. Their own environments and tokens; no
// production access.
@id("ci.environments")
permit (
    principal in Airlock::Role::"ci",
    action in [Airlock::Action::"environment.create", Airlock::Action::"environment.list"],
    resource
);
@id("ci.own_environments")
permit (
    principal in Airlock::Role::"ci",
    action in [
        Airlock::Action::"environment.get",
        Airlock::Action::"environment.stop",
        Airlock::Action::"environment.start",
        Airlock::Action::"environment.delete",
        Airlock::Action::"environment.exec",
        Airlock::Action::"environment.extend",
        Airlock::Action::"environment.lease"
    ],
    resource
)
when { resource.owner == principal };
@id("ci.own_tokens")
permit (
    principal in Airlock::Role::"ci",
    action in [Airlock::Action::"token.create", Airlock::Action::"token.list"],
    resource
)
when { resource == principal };
@id("ci.revoke_own_tokens")
permit (principal in Airlock::Role::"ci", action == Airlock::Action::"token.revoke", resource)
when { resource.owner == principal };

// viewer: sees the list of their environments, each of their own, and the profiles.
@id("viewer.environments")
permit (principal in Airlock::Role::"viewer", action == Airlock::Action::"environment.list", resource);
@id("viewer.own_environments")
permit (principal in Airlock::Role::"viewer", action == Airlock::Action::"environment.get", resource)
when { resource.owner == principal };
@id("viewer.profiles")
permit (
    principal in Airlock::Role::"viewer",
    action in [Airlock::Action::"profile.list", Airlock::Action::"profile.get"],
    resource
);

// auditor: reads everything, changes nothing (but may list their own tokens).
@id("auditor.read_all")
permit (
    principal in Airlock::Role::"auditor",
    action in [
        Airlock::Action::"environment.list",
        Airlock::Action::"environment.list_all",
        Airlock::Action::"environment.get",
        Airlock::Action::"user.list",
        Airlock::Action::"user.get",
        Airlock::Action::"team.list",
        Airlock::Action::"profile.list",
        Airlock::Action::"profile.get",
        Airlock::Action::"access.list",
        Airlock::Action::"access.list_all",
        Airlock::Action::"access.get",
        Airlock::Action::"audit.read",
        Airlock::Action::"metrics.read"
    ],
    resource
);
@id("auditor.own_tokens")
permit (principal in Airlock::Role::"auditor", action == Airlock::Action::"token.list", resource)
when { resource == principal };

// approver: sees the profiles and every access request, to work the queue. Deciding a request
// is the next block's: the profile's approvers decide, whatever their role.
@id("approver.read_requests")
permit (
    principal in Airlock::Role::"approver",
    action in [
        Airlock::Action::"profile.list",
        Airlock::Action::"profile.get",
        Airlock::Action::"access.list",
        Airlock::Action::"access.list_all",
        Airlock::Action::"access.get"
    ],
    resource
);

// A profile's approvers (by role, team or user) may see, approve, deny and revoke its requests.
@id("profile_approvers.decide")
permit (
    principal,
    action in [
        Airlock::Action::"access.get",
        Airlock::Action::"access.approve",
        Airlock::Action::"access.deny",
        Airlock::Action::"access.revoke"
    ],
    resource
)
when {
    principal in resource.profile.approver_roles ||
    principal in resource.profile.approver_teams ||
    principal in resource.profile.approver_users
};

// Nobody decides their own request, admins and listed approvers included.
@id("nobody.decides_own_request")
forbid (
    principal,
    action in [Airlock::Action::"access.approve", Airlock::Action::"access.deny"],
    resource
)
when { resource.requester == principal };
"#;

    /// The built-in policies plus the operator's (Cedar text), validated against the schema in
    /// strict mode. `replace_defaults` drops the built-ins so an operator's file is the whole
    /// policy.
    ///
    /// # Errors
    /// A [`PolicyError`] saying what is wrong where, if the operator's text does not parse, does
    /// not fit [`Self::SCHEMA`], reuses a policy id or holds a template, or if `replace_defaults`
    /// leaves nothing permitted.
    pub fn new(
        operator_policies: Option<&str>,
        replace_defaults: bool,
    ) -> Result<Self, PolicyError> {
        let schema = Schema::from_cedarschema_str(Self::SCHEMA)
            .map(|(schema, _warnings)| schema)
            .expect("the built-in schema parses (tested)");
        let validator = Validator::new(schema);

        let mut policies = PolicySet::new();
        if !replace_defaults {
            add_policies(
                &mut policies,
                &validator,
                PolicyOrigin::BuiltIn,
                Self::DEFAULT_POLICIES,
            )?;
        }
        if let Some(text) = operator_policies {
            add_policies(&mut policies, &validator, PolicyOrigin::Operator, text)?;
        }
        if replace_defaults
            && !policies
                .policies()
                .any(|policy| policy.effect() == Effect::Permit)
        {
            return Err(PolicyError::NothingPermitted);
        }

        let names = Names::new();
        let action_type =
            EntityTypeName::from_str("Airlock::Action").expect("a valid Cedar type name");
        let actions = ACTION_TABLE
            .iter()
            .map(|&(name, kind)| {
                let uid = Names::uid(&action_type, name);
                let policies = policies_for_action(&policies, &uid);
                (
                    name,
                    ActionPolicies {
                        uid,
                        kind,
                        policies,
                    },
                )
            })
            .collect();
        Ok(Authorizer {
            cedar: cedar_policy::Authorizer::new(),
            actions,
            names,
            all_policies: policies,
        })
    }

    /// Whether `subject` may do `action` to `resource`. Denies an unknown action, a resource of
    /// another kind than the action takes, and any decision in which a policy failed to evaluate.
    #[must_use]
    pub fn is_allowed(&self, subject: &Subject<'_>, action: &str, resource: &Resource<'_>) -> bool {
        match self.actions.get(action) {
            Some(action) => self.decide(subject, action, resource, &action.policies),
            None => false,
        }
    }

    /// Cedar's decision on `policies`, with any evaluation error as a denial.
    fn decide(
        &self,
        subject: &Subject<'_>,
        action: &ActionPolicies,
        resource: &Resource<'_>,
        policies: &PolicySet,
    ) -> bool {
        if resource.kind() != action.kind {
            return false;
        }
        let principal = self.names.user(subject.user);
        let Some((resource_uid, entities)) = self.entities(&principal, subject, resource) else {
            return false;
        };
        let Ok(request) = Request::new(
            principal,
            action.uid.clone(),
            resource_uid,
            Context::empty(),
            None,
        ) else {
            return false;
        };
        let response = self.cedar.is_authorized(&request, policies, &entities);
        response.decision() == Decision::Allow && response.diagnostics().errors().next().is_none()
    }

    /// The entities one decision needs: the principal, a member of its roles and teams, and the
    /// resource with its attributes (for an access request, its profile too). Entities without
    /// attributes (the server, a user or team as the resource, the roles and teams themselves)
    /// are left out: Cedar treats a missing entity as one with no attributes and no parents,
    /// and `principal in Airlock::Role::"admin"` looks only at the principal's parents. Every
    /// entity costs time in Cedar's transitive closure. `None` if Cedar refuses the entities
    /// (it should not: nothing here depends on the ids but their text).
    fn entities(
        &self,
        principal: &EntityUid,
        subject: &Subject<'_>,
        resource: &Resource<'_>,
    ) -> Option<(EntityUid, Entities)> {
        let names = &self.names;
        let parents: HashSet<EntityUid> = subject
            .roles
            .iter()
            .map(|role| names.role(*role))
            .chain(subject.teams.iter().map(|team| names.team(team.as_str())))
            .collect();
        let mut entities = Vec::with_capacity(3);
        entities.push(Entity::new_no_attrs(principal.clone(), parents));

        let resource_uid = match resource {
            Resource::Server => names.server.clone(),
            Resource::User { id } => names.user(id),
            Resource::Team { name } => names.team(name),
            Resource::Environment { id, owner, team } => {
                let uid = Names::uid(&names.environment, id);
                let mut attrs = HashMap::with_capacity(2);
                attrs.insert("owner".to_owned(), entity(names.user(owner)));
                if let Some(team) = team {
                    attrs.insert("team".to_owned(), entity(names.team(team)));
                }
                entities.push(Entity::new(uid.clone(), attrs, HashSet::new()).ok()?);
                uid
            }
            Resource::Token { id, owner } => {
                let uid = Names::uid(&names.token, id);
                let attrs = HashMap::from([("owner".to_owned(), entity(names.user(owner)))]);
                entities.push(Entity::new(uid.clone(), attrs, HashSet::new()).ok()?);
                uid
            }
            Resource::AccessProfile(profile) => {
                let (uid, profile) = self.profile_entity(profile)?;
                entities.push(profile);
                uid
            }
            Resource::AccessRequest {
                id,
                requester,
                profile,
            } => {
                let uid = Names::uid(&names.access_request, id);
                let (profile_uid, profile) = self.profile_entity(profile)?;
                let attrs = HashMap::from([
                    ("requester".to_owned(), entity(names.user(requester))),
                    ("profile".to_owned(), entity(profile_uid)),
                ]);
                entities.push(Entity::new(uid.clone(), attrs, HashSet::new()).ok()?);
                entities.push(profile);
                uid
            }
        };
        let entities = Entities::from_entities(entities, None).ok()?;
        Some((resource_uid, entities))
    }

    fn profile_entity(&self, profile: &ProfileRef<'_>) -> Option<(EntityUid, Entity)> {
        let uid = Names::uid(&self.names.access_profile, profile.name);
        let [requester_roles, requester_teams, requester_users] =
            self.party_sets(profile.requesters);
        let [approver_roles, approver_teams, approver_users] = self.party_sets(profile.approvers);
        let attrs = HashMap::from([
            ("requester_roles".to_owned(), requester_roles),
            ("requester_teams".to_owned(), requester_teams),
            ("requester_users".to_owned(), requester_users),
            ("approver_roles".to_owned(), approver_roles),
            ("approver_teams".to_owned(), approver_teams),
            ("approver_users".to_owned(), approver_users),
        ]);
        let entity = Entity::new(uid.clone(), attrs, HashSet::new()).ok()?;
        Some((uid, entity))
    }

    /// Parties as three sets, of roles, teams and users: Cedar's sets hold one type each.
    fn party_sets(&self, parties: &[Party]) -> [RestrictedExpression; 3] {
        let (mut roles, mut teams, mut users) = (Vec::new(), Vec::new(), Vec::new());
        for party in parties {
            let set = match party {
                Party::Role(_) => &mut roles,
                Party::Team(_) => &mut teams,
                Party::User(_) => &mut users,
            };
            set.push(entity(self.names.party(party)));
        }
        [roles, teams, users].map(RestrictedExpression::new_set)
    }
}

fn entity(uid: EntityUid) -> RestrictedExpression {
    RestrictedExpression::new_entity_uid(uid)
}

/// The policies of `all` whose action scope is open or names `action`; see
/// [`ActionPolicies::policies`].
fn policies_for_action(all: &PolicySet, action: &EntityUid) -> PolicySet {
    let mut relevant = PolicySet::new();
    for policy in all.policies() {
        let applies = match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(named) => named == *action,
            ActionConstraint::In(named) => named.contains(action),
        };
        if applies {
            relevant
                .add(policy.clone())
                .expect("ids are unique in a subset of a policy set");
        }
    }
    relevant
}

/// Parses `text`, checks it against the schema, and adds its policies to `policies` under their
/// `@id` (or Cedar's `policyN`).
fn add_policies(
    policies: &mut PolicySet,
    validator: &Validator,
    origin: PolicyOrigin,
    text: &str,
) -> Result<(), PolicyError> {
    let parsed = PolicySet::from_str(text).map_err(|errors| PolicyError::Syntax {
        origin,
        problems: errors
            .iter()
            .map(|error| problem(text, error, None))
            .collect(),
    })?;
    if let Some(template) = parsed.templates().next() {
        return Err(PolicyError::Template {
            origin,
            policy: template
                .annotation("id")
                .map_or_else(|| template.id().to_string(), str::to_owned),
        });
    }

    let mut renamed = PolicySet::new();
    for policy in parsed.policies() {
        let policy: Policy = match policy.annotation("id") {
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy.clone(),
        };
        let id = policy.id().to_string();
        renamed.add(policy).map_err(|_| PolicyError::DuplicateId {
            origin,
            policy: id,
            taken_by_built_in: false,
        })?;
    }

    let result = validator.validate(&renamed, ValidationMode::Strict);
    if !result.validation_passed() {
        let mut problems: Vec<PolicyProblem> = result
            .validation_errors()
            .map(|error| problem(text, error, Some(error.policy_id().to_string())))
            .collect();
        problems
            .sort_by(|a, b| (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message)));
        return Err(PolicyError::Schema { origin, problems });
    }

    for policy in renamed.policies() {
        let id = policy.id().to_string();
        policies
            .add(policy.clone())
            .map_err(|_| PolicyError::DuplicateId {
                origin,
                policy: id,
                taken_by_built_in: true,
            })?;
    }
    Ok(())
}

/// A Cedar diagnostic as a [`PolicyProblem`], located by its first label in `text`.
fn problem(text: &str, diagnostic: &dyn Diagnostic, policy: Option<String>) -> PolicyProblem {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = match offset {
        Some(offset) => {
            let (line, column) = line_and_column(text, offset);
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    PolicyProblem {
        line,
        column,
        policy,
        message: diagnostic.to_string(),
        help: diagnostic.help().map(|help| help.to_string()),
    }
}

/// The 1-based line and column (in characters) of a byte offset in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::LazyLock;

    use super::*;
    use crate::ids::{Name, UserId};

    const ME: &str = "usr_01hme000000000000000000000";
    const OTHER: &str = "usr_01h0ther000000000000000000";

    fn team(name: &str) -> Party {
        Party::Team(Name::parse("team", name).unwrap())
    }

    fn user(id: &str) -> Party {
        Party::User(UserId::parse(id).unwrap())
    }

    static DEFAULTS: LazyLock<Authorizer> =
        LazyLock::new(|| Authorizer::new(None, false).expect("the built-in policies are valid"));

    const DEVELOPERS: &[Party] = &[Party::Role(Role::Developer)];
    const APPROVERS: &[Party] = &[Party::Role(Role::Approver)];
    const OPEN_PROFILE: ProfileRef<'static> = ProfileRef {
        name: "prod-read",
        requesters: DEVELOPERS,
        approvers: APPROVERS,
    };
    const CLOSED_PROFILE: ProfileRef<'static> = ProfileRef {
        name: "prod-admin",
        requesters: &[],
        approvers: &[],
    };

    /// The resources of the sweep, by label: one or two of each kind, owned by `ME` or `OTHER`.
    fn labelled_resources() -> Vec<(&'static str, Resource<'static>)> {
        vec![
            ("server", Resource::Server),
            (
                "own_env",
                Resource::Environment {
                    id: "env_1",
                    owner: ME,
                    team: None,
                },
            ),
            (
                "other_env",
                Resource::Environment {
                    id: "env_2",
                    owner: OTHER,
                    team: Some("payments"),
                },
            ),
            ("me", Resource::User { id: ME }),
            ("other_user", Resource::User { id: OTHER }),
            (
                "own_token",
                Resource::Token {
                    id: "tok_1",
                    owner: ME,
                },
            ),
            (
                "other_token",
                Resource::Token {
                    id: "tok_2",
                    owner: OTHER,
                },
            ),
            ("team", Resource::Team { name: "payments" }),
            ("open_profile", Resource::AccessProfile(OPEN_PROFILE)),
            ("closed_profile", Resource::AccessProfile(CLOSED_PROFILE)),
            (
                "own_request",
                Resource::AccessRequest {
                    id: "acc_1",
                    requester: ME,
                    profile: OPEN_PROFILE,
                },
            ),
            (
                "other_request",
                Resource::AccessRequest {
                    id: "acc_2",
                    requester: OTHER,
                    profile: OPEN_PROFILE,
                },
            ),
        ]
    }

    fn subject<'a>(roles: &'a [Role], teams: &'a [Name]) -> Subject<'a> {
        Subject {
            user: ME,
            roles,
            teams,
        }
    }

    /// `ME`, holding `role` and no team, asks `authorizer` to do `action` to `resource`.
    #[track_caller]
    fn check_with(
        authorizer: &Authorizer,
        role: Role,
        action: &str,
        resource: &Resource<'_>,
        expected: bool,
    ) {
        let allowed = authorizer.is_allowed(&subject(&[role], &[]), action, resource);
        assert_eq!(
            allowed,
            expected,
            "{} {action} on {resource:?}",
            role.as_str()
        );
    }

    #[track_caller]
    fn check(role: Role, action: &str, resource: &Resource<'_>, expected: bool) {
        check_with(&DEFAULTS, role, action, resource, expected);
    }

    /// Every action on every resource of its kind: exactly the `(action, resource label)` pairs
    /// in `allowed` pass for `role`.
    #[track_caller]
    fn check_role(role: Role, allowed: &[(&str, &str)]) {
        let allowed: BTreeSet<(&str, &str)> = allowed.iter().copied().collect();
        let mut seen = BTreeSet::new();
        for &(action, kind) in &ACTION_TABLE {
            for (label, resource) in labelled_resources() {
                if resource.kind() == kind {
                    seen.insert((action, label));
                    check(role, action, &resource, allowed.contains(&(action, label)));
                }
            }
        }
        let unknown: Vec<_> = allowed.difference(&seen).collect();
        assert!(
            unknown.is_empty(),
            "pairs that match no action and resource: {unknown:?}"
        );
    }

    #[test]
    fn admin_may_do_everything_but_decide_requests() {
        let mut allowed = Vec::new();
        for &(action, kind) in &ACTION_TABLE {
            for (label, resource) in labelled_resources() {
                if resource.kind() == kind && !matches!(action, "access.approve" | "access.deny") {
                    allowed.push((action, label));
                }
            }
        }
        check_role(Role::Admin, &allowed);
    }

    #[test]
    fn developer_may_use_own_environments_and_tokens_and_request_access() {
        check_role(
            Role::Developer,
            &[
                ("whoami", "server"),
                ("environment.create", "server"),
                ("environment.list", "server"),
                ("environment.get", "own_env"),
                ("environment.stop", "own_env"),
                ("environment.start", "own_env"),
                ("environment.delete", "own_env"),
                ("environment.exec", "own_env"),
                ("environment.extend", "own_env"),
                ("environment.lease", "own_env"),
                ("token.create", "me"),
                ("token.list", "me"),
                ("token.revoke", "own_token"),
                ("profile.list", "server"),
                ("profile.get", "open_profile"),
                ("profile.get", "closed_profile"),
                ("access.request", "open_profile"),
                ("access.list", "server"),
                ("access.get", "own_request"),
                ("access.revoke", "own_request"),
            ],
        );
    }

    #[test]
    fn ci_may_use_own_environments_and_tokens_only() {
        check_role(
            Role::Ci,
            &[
                ("whoami", "server"),
                ("environment.create", "server"),
                ("environment.list", "server"),
                ("environment.get", "own_env"),
                ("environment.stop", "own_env"),
                ("environment.start", "own_env"),
                ("environment.delete", "own_env"),
                ("environment.exec", "own_env"),
                ("environment.extend", "own_env"),
                ("environment.lease", "own_env"),
                ("token.create", "me"),
                ("token.list", "me"),
                ("token.revoke", "own_token"),
            ],
        );
    }

    #[test]
    fn viewer_may_see_own_environments_and_profiles() {
        check_role(
            Role::Viewer,
            &[
                ("whoami", "server"),
                ("environment.list", "server"),
                ("environment.get", "own_env"),
                ("profile.list", "server"),
                ("profile.get", "open_profile"),
                ("profile.get", "closed_profile"),
            ],
        );
    }

    #[test]
    fn auditor_may_read_everything_and_change_nothing() {
        check_role(
            Role::Auditor,
            &[
                ("whoami", "server"),
                ("environment.list", "server"),
                ("environment.list_all", "server"),
                ("environment.get", "own_env"),
                ("environment.get", "other_env"),
                ("user.list", "server"),
                ("user.get", "me"),
                ("user.get", "other_user"),
                ("team.list", "server"),
                ("profile.list", "server"),
                ("profile.get", "open_profile"),
                ("profile.get", "closed_profile"),
                ("access.list", "server"),
                ("access.list_all", "server"),
                ("access.get", "own_request"),
                ("access.get", "other_request"),
                ("audit.read", "server"),
                ("metrics.read", "server"),
                ("token.list", "me"),
            ],
        );
    }

    #[test]
    fn approver_may_see_requests_and_decide_those_of_profiles_naming_the_role() {
        check_role(
            Role::Approver,
            &[
                ("whoami", "server"),
                ("profile.list", "server"),
                ("profile.get", "open_profile"),
                ("profile.get", "closed_profile"),
                ("access.list", "server"),
                ("access.list_all", "server"),
                ("access.get", "own_request"),
                ("access.get", "other_request"),
                ("access.approve", "other_request"),
                ("access.deny", "other_request"),
                ("access.revoke", "other_request"),
                // A listed approver may withdraw their own request, never decide it.
                ("access.revoke", "own_request"),
            ],
        );
    }

    #[test]
    fn a_user_without_roles_may_only_ask_who_they_are() {
        for &(action, kind) in &ACTION_TABLE {
            for (_, resource) in labelled_resources() {
                if resource.kind() == kind {
                    let allowed = DEFAULTS.is_allowed(&subject(&[], &[]), action, &resource);
                    assert_eq!(allowed, action == "whoami", "{action} on {resource:?}");
                }
            }
        }
    }

    #[test]
    fn roles_add_up() {
        let roles = [Role::Viewer, Role::Approver];
        let subject = subject(&roles, &[]);
        let own_env = Resource::Environment {
            id: "env_1",
            owner: ME,
            team: None,
        };
        assert!(DEFAULTS.is_allowed(&subject, "environment.get", &own_env));
        assert!(DEFAULTS.is_allowed(&subject, "access.list_all", &Resource::Server));
        assert!(!DEFAULTS.is_allowed(&subject, "environment.create", &Resource::Server));
    }

    #[test]
    fn requesters_may_be_named_by_team_or_user() {
        let payments = vec![team("payments")];
        let me = vec![user(ME)];
        let by_team = Resource::AccessProfile(ProfileRef {
            name: "payments-db",
            requesters: &payments,
            approvers: APPROVERS,
        });
        let by_user = Resource::AccessProfile(ProfileRef {
            name: "my-db",
            requesters: &me,
            approvers: APPROVERS,
        });
        let in_payments = [Name::parse("team", "payments").unwrap()];
        let in_search = [Name::parse("team", "search").unwrap()];
        let developer = [Role::Developer];
        let ask = |teams: &[Name], roles: &[Role], profile: &Resource<'_>| {
            DEFAULTS.is_allowed(&subject(roles, teams), "access.request", profile)
        };

        assert!(ask(&in_payments, &developer, &by_team));
        assert!(!ask(&in_search, &developer, &by_team));
        assert!(!ask(&[], &developer, &by_team));
        assert!(ask(&[], &developer, &by_user));
        // Requesting is a developer's: being named is not enough for other roles.
        assert!(!ask(&in_payments, &[Role::Ci], &by_team));
        assert!(!ask(&[], &[Role::Viewer], &by_user));
    }

    /// A request by `OTHER` for a profile with these approvers.
    fn others_request(approvers: &[Party]) -> Resource<'_> {
        Resource::AccessRequest {
            id: "acc_2",
            requester: OTHER,
            profile: ProfileRef {
                name: "prod-write",
                requesters: DEVELOPERS,
                approvers,
            },
        }
    }

    #[test]
    fn approvers_may_be_named_by_role_team_or_user() {
        let admins = [Party::Role(Role::Admin)];
        let sre = [team("sre")];
        let me = [user(ME)];
        let in_sre = [Name::parse("team", "sre").unwrap()];

        // The admin role decides only where a profile names it.
        check(
            Role::Admin,
            "access.approve",
            &others_request(&admins),
            true,
        );
        check(Role::Admin, "access.deny", &others_request(&admins), true);
        check(
            Role::Admin,
            "access.approve",
            &others_request(APPROVERS),
            false,
        );

        // A team, whatever its members' roles.
        let developer_in_sre = subject(&[Role::Developer], &in_sre);
        for action in [
            "access.get",
            "access.approve",
            "access.deny",
            "access.revoke",
        ] {
            assert!(DEFAULTS.is_allowed(&developer_in_sre, action, &others_request(&sre)));
        }
        check(
            Role::Developer,
            "access.approve",
            &others_request(&sre),
            false,
        );

        // A user by id.
        check(Role::Viewer, "access.approve", &others_request(&me), true);
        check(
            Role::Viewer,
            "access.approve",
            &others_request(APPROVERS),
            false,
        );

        // The approver role alone decides nothing a profile does not name it for.
        check(
            Role::Approver,
            "access.approve",
            &others_request(&sre),
            false,
        );
        check(Role::Approver, "access.get", &others_request(&sre), true);
    }

    #[test]
    fn nobody_decides_their_own_request_not_even_an_admin_or_a_listed_approver() {
        let admins_and_me = [Party::Role(Role::Admin), user(ME)];
        let own_request = Resource::AccessRequest {
            id: "acc_1",
            requester: ME,
            profile: ProfileRef {
                name: "prod-write",
                requesters: DEVELOPERS,
                approvers: &admins_and_me,
            },
        };
        for role in [Role::Admin, Role::Approver, Role::Developer] {
            check(role, "access.approve", &own_request, false);
            check(role, "access.deny", &own_request, false);
            // Withdrawing one's own request is fine.
            check(role, "access.revoke", &own_request, true);
        }
        let all_roles = Role::ALL;
        let everything = subject(&all_roles, &[]);
        assert!(!DEFAULTS.is_allowed(&everything, "access.approve", &own_request));
    }

    #[test]
    fn an_unknown_action_or_a_resource_of_the_wrong_kind_is_denied() {
        check(Role::Admin, "environment.explode", &Resource::Server, false);
        check(Role::Admin, "", &Resource::Server, false);
        check(Role::Admin, "Environment.Create", &Resource::Server, false);
        let own_env = Resource::Environment {
            id: "env_1",
            owner: ME,
            team: None,
        };
        check(Role::Admin, "environment.create", &own_env, false);
        check(Role::Developer, "environment.get", &Resource::Server, false);
        check(Role::Developer, "environment.get", &own_env, true);
    }

    #[test]
    fn ids_are_data_not_cedar() {
        // Quotes, backslashes and Cedar syntax in ids are just characters of an id.
        let hostile = r#"usr_me", principal, action, resource) when { true }; //"#;
        let subject = Subject {
            user: hostile,
            roles: &[Role::Developer],
            teams: &[],
        };
        let theirs = Resource::Environment {
            id: "env_1",
            owner: hostile,
            team: None,
        };
        let mine = Resource::Environment {
            id: "env_1",
            owner: ME,
            team: None,
        };
        assert!(DEFAULTS.is_allowed(&subject, "environment.exec", &theirs));
        assert!(!DEFAULTS.is_allowed(&subject, "environment.exec", &mine));
    }

    #[test]
    fn an_operator_policy_may_extend_the_defaults() {
        let authorizer = Authorizer::new(
            Some(
                r#"
                // CI may ask for the deploy profile, as long as the profile lets it.
                @id("ci.request_deploy")
                permit (
                    principal in Airlock::Role::"ci",
                    action == Airlock::Action::"access.request",
                    resource == Airlock::AccessProfile::"deploy"
                )
                when { principal in resource.requester_roles };
                "#,
            ),
            false,
        )
        .unwrap();
        let ci = [Party::Role(Role::Ci)];
        let deploy = Resource::AccessProfile(ProfileRef {
            name: "deploy",
            requesters: &ci,
            approvers: APPROVERS,
        });
        let other = Resource::AccessProfile(ProfileRef {
            name: "prod-write",
            requesters: &ci,
            approvers: APPROVERS,
        });
        check_with(&authorizer, Role::Ci, "access.request", &deploy, true);
        check_with(&authorizer, Role::Ci, "access.request", &other, false);
        check_with(&authorizer, Role::Viewer, "access.request", &deploy, false);
        // The defaults still hold.
        check_with(
            &authorizer,
            Role::Ci,
            "environment.create",
            &Resource::Server,
            true,
        );
        check(Role::Ci, "access.request", &deploy, false);
    }

    #[test]
    fn an_operator_forbid_overrides_the_defaults_admins_included() {
        let authorizer = Authorizer::new(
            Some(
                r#"
                @id("payments.no_exec")
                forbid (principal, action == Airlock::Action::"environment.exec", resource)
                when { resource has team && resource.team == Airlock::Team::"payments" };
                "#,
            ),
            false,
        )
        .unwrap();
        let payments_env = Resource::Environment {
            id: "env_1",
            owner: ME,
            team: Some("payments"),
        };
        let search_env = Resource::Environment {
            id: "env_2",
            owner: ME,
            team: Some("search"),
        };
        for role in [Role::Admin, Role::Developer] {
            check_with(&authorizer, role, "environment.exec", &payments_env, false);
            check_with(&authorizer, role, "environment.get", &payments_env, true);
            check_with(&authorizer, role, "environment.exec", &search_env, true);
        }
    }

    #[test]
    fn replace_defaults_makes_the_operator_file_the_whole_policy() {
        let authorizer = Authorizer::new(
            Some(
                r#"permit (principal in Airlock::Role::"viewer", action == Airlock::Action::"environment.list", resource);"#,
            ),
            true,
        )
        .unwrap();
        check_with(
            &authorizer,
            Role::Viewer,
            "environment.list",
            &Resource::Server,
            true,
        );
        check_with(
            &authorizer,
            Role::Viewer,
            "whoami",
            &Resource::Server,
            false,
        );
        check_with(
            &authorizer,
            Role::Admin,
            "environment.list",
            &Resource::Server,
            false,
        );
        check_with(
            &authorizer,
            Role::Admin,
            "user.create",
            &Resource::Server,
            false,
        );
    }

    #[test]
    fn replace_defaults_with_nothing_permitted_is_refused() {
        for text in [None, Some(""), Some("// nothing yet\n")] {
            let error = Authorizer::new(text, true).unwrap_err();
            assert!(matches!(error, PolicyError::NothingPermitted), "{error}");
        }
        let only_forbid = r#"forbid (principal, action, resource);"#;
        assert!(matches!(
            Authorizer::new(Some(only_forbid), true),
            Err(PolicyError::NothingPermitted)
        ));
        // Without replace_defaults an empty file is fine.
        Authorizer::new(Some(""), false).unwrap();
    }

    #[test]
    fn a_syntax_error_is_reported_with_its_line_and_column() {
        let text =
            "permit (principal, action, resource);\n\npermit (principal, action resource);\n";
        let error = Authorizer::new(Some(text), false).unwrap_err();
        let PolicyError::Syntax { origin, problems } = &error else {
            panic!("expected a syntax error, got {error:?}");
        };
        assert_eq!(*origin, PolicyOrigin::Operator);
        assert_eq!(problems[0].line, Some(3));
        assert_eq!(problems[0].column, Some(27));
        let message = error.to_string();
        assert!(
            message.starts_with("the operator's policies are not valid Cedar:"),
            "{message}"
        );
        assert!(
            message.contains("line 3, column 27: unexpected token"),
            "{message}"
        );
    }

    #[test]
    fn a_policy_that_does_not_fit_the_schema_is_reported_with_its_id_and_line() {
        let text = r#"
@id("colour")
permit (principal, action == Airlock::Action::"environment.get", resource)
when { resource.colour == "red" };
"#;
        let error = Authorizer::new(Some(text), false).unwrap_err();
        let PolicyError::Schema { origin, problems } = &error else {
            panic!("expected a schema error, got {error:?}");
        };
        assert_eq!(*origin, PolicyOrigin::Operator);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].policy.as_deref(), Some("colour"));
        assert_eq!(problems[0].line, Some(4));
        let message = error.to_string();
        assert!(message.contains("line 4, column 8"), "{message}");
        assert!(message.contains("colour"), "{message}");
        assert!(message.contains("Airlock::Environment"), "{message}");
    }

    #[test]
    fn unknown_actions_types_and_optional_attributes_are_refused_at_start() {
        for text in [
            r#"permit (principal, action == Airlock::Action::"environment.explode", resource);"#,
            r#"permit (principal in Airlock::Group::"sre", action, resource);"#,
            r#"permit (principal, action == Airlock::Action::"environment.get", resource) when { resource.team == Airlock::Team::"sre" };"#,
            r#"permit (principal, action == Airlock::Action::"whoami", resource) when { resource.owner == principal };"#,
        ] {
            let error = Authorizer::new(Some(text), false).unwrap_err();
            assert!(
                matches!(error, PolicyError::Schema { .. }),
                "{text}: {error:?}"
            );
        }
    }

    #[test]
    fn a_duplicate_id_or_a_template_is_refused() {
        let duplicate = r#"@id("admin.all_but_decisions") permit (principal, action == Airlock::Action::"whoami", resource);"#;
        let error = Authorizer::new(Some(duplicate), false).unwrap_err();
        assert!(
            matches!(&error, PolicyError::DuplicateId { policy, taken_by_built_in: true, .. } if policy == "admin.all_but_decisions"),
            "{error:?}"
        );
        Authorizer::new(Some(duplicate), true).unwrap();
        let twice = format!("{duplicate}\n{duplicate}");
        let error = Authorizer::new(Some(&twice), true).unwrap_err();
        assert!(
            matches!(
                &error,
                PolicyError::DuplicateId {
                    taken_by_built_in: false,
                    ..
                }
            ),
            "{error:?}"
        );

        let template = r#"@id("t") permit (principal == ?principal, action, resource);"#;
        let error = Authorizer::new(Some(template), false).unwrap_err();
        assert!(matches!(error, PolicyError::Template { .. }), "{error:?}");
    }

    #[test]
    fn actions_and_schema_agree() {
        let (schema, warnings) = Schema::from_cedarschema_str(Authorizer::SCHEMA).unwrap();
        assert_eq!(warnings.count(), 0);
        let in_schema: BTreeSet<String> = schema
            .request_envs()
            .map(|env| {
                let resource = env.resource().to_string();
                let kind = resource.strip_prefix("Airlock::").unwrap().to_owned();
                assert_eq!(env.principal().to_string(), "Airlock::User");
                format!("{} {kind}", env.action().id().unescaped())
            })
            .collect();
        let in_table: BTreeSet<String> = ACTION_TABLE
            .iter()
            .map(|(action, kind)| format!("{action} {kind:?}"))
            .collect();
        assert_eq!(in_schema, in_table);
        assert_eq!(Authorizer::ACTIONS.len(), ACTION_TABLE.len());
        let unique: BTreeSet<_> = Authorizer::ACTIONS.iter().collect();
        assert_eq!(unique.len(), Authorizer::ACTIONS.len());
    }

    #[test]
    fn the_built_in_policies_are_all_named() {
        let defaults = PolicySet::from_str(Authorizer::DEFAULT_POLICIES).unwrap();
        for policy in defaults.policies() {
            assert!(policy.annotation("id").is_some(), "{policy}");
        }
        let reloaded = Authorizer::new(Some(Authorizer::DEFAULT_POLICIES), true).unwrap();
        check_with(
            &reloaded,
            Role::Developer,
            "environment.create",
            &Resource::Server,
            true,
        );
    }

    #[test]
    fn evaluating_only_the_policies_of_the_action_changes_no_decision() {
        let extended = Authorizer::new(
            Some(
                r#"
                @id("ci.request_deploy")
                permit (principal in Airlock::Role::"ci", action == Airlock::Action::"access.request", resource);
                @id("no_exec_on_payments")
                forbid (principal, action, resource)
                when { action == Airlock::Action::"environment.exec" && resource has team };
                "#,
            ),
            false,
        )
        .unwrap();
        let teams = [Name::parse("team", "payments").unwrap()];
        for authorizer in [&*DEFAULTS, &extended] {
            for role in Role::ALL {
                let roles = [role];
                let subject = subject(&roles, &teams);
                for (name, action) in &authorizer.actions {
                    for (label, resource) in labelled_resources() {
                        let everything = authorizer.decide(
                            &subject,
                            action,
                            &resource,
                            &authorizer.all_policies,
                        );
                        assert_eq!(
                            authorizer.is_allowed(&subject, name, &resource),
                            everything,
                            "{} {name} on {label}",
                            role.as_str()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_authorizer_may_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Authorizer>();
    }
}
